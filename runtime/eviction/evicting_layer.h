// One layer of the compressed KV cache under token eviction (issue 10): what a layer of
// runtime/compressed_cache.h becomes when its recipe has a token policy other than `full`, or a
// high-precision guard. compressed_cache delegates append / attend / reconstruct / stats to it.
//
// Per KV head it holds R <= seen tokens in position order (a token table: score, and per K|V
// stream where the token's bytes are), and per stream two compacted paged arrays:
//   fp16     fp16 rows: the recent window, sinks, guard tokens, and the per-channel leftovers
//            (tokens of the compressed class not yet filling a group, as the byte accounting)
//   records  the layer's method for that stream (runtime/kv_codec.h), per token or per block
// plus, for policies that pick arbitrary tokens (h2o, lru, cluster, learned), an int32 position
// per held token (a paged `index`, shared by K and V), from the first eviction on: before it the
// positions are consecutive, and a window's are implied (sinks, then up to the newest).
// RoPE is applied to reconstructed keys at those positions. Cluster centroids: cluster.h.
//
// Eviction runs at the end of attend(), after the scores of its queries are in: at the end of
// prefill from the prefill's attention, then every decode step. Per KV head the policy keeps R
// tokens (select.h), evicted tokens merge into centroids (cluster) or are dropped, the kept ones
// are assigned fp16 (window, guard) or the layer's method, and the streams are rebuilt into new
// pages; the old pages go back to the pool (bytes held shrink, pages are reused). Records are
// moved, not re-encoded, except: a guard token whose record was compressed is decoded into fp16
// (its values stay those of the record), and the surviving tokens of a per-channel block that
// lost a member are decoded and re-quantized into new blocks with the other waiting tokens.
// V is attended reconstructed (no latent-space path here). Adaptive mode: nothing is evicted
// or compressed while the layer has seen at most `compress_after` tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/eviction/cluster.h"
#include "runtime/eviction/policy.h"
#include "runtime/kv_codec.h"
#include "runtime/kv_store.h"

namespace kvcal {

struct method_bytes;

struct evicting_layer_params {
  int layer = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  std::int64_t window = 0;           // fp16 recent window: max(residual, adaptive keep_recent)
  std::int64_t compress_after = -1;  // adaptive: dormant while seen <= this (-1: not adaptive)
  std::int64_t sliding_window = 0;   // the model's attention mask (0 = none)
  int page_tokens = 64;
};

class evicting_layer {
 public:
  // codecs[kv][h]: the stream codecs of K (kv = 0) and V (kv = 1) per KV head.
  evicting_layer(const layer_recipe& lr, const evicting_layer_params& p,
                 std::vector<std::unique_ptr<kv_codec>> k_codecs,
                 std::vector<std::unique_ptr<kv_codec>> v_codecs,
                 const std::vector<tensor_view>& tensors, page_pool* pool,
                 const std::string& source);

  // k_pre, v: [T, n_kv, d]; positions consecutive; maybe_hidden: [T, hidden_size] or null.
  void append(const float* k_pre, const float* v, const std::int64_t* positions, std::int64_t T,
              const float* maybe_hidden, std::int64_t hidden_size);
  // q_rope, out: [n_heads, T, d]; inv_freq [d / 2] and scaling: the cache's RoPE. Then evicts.
  void attend(const float* q_rope, const std::int64_t* positions, std::int64_t T, float* out,
              const float* inv_freq, float attention_scaling);
  // Held keys (before RoPE) or values of one KV head in position order. out: [held(h), d].
  void reconstruct(int h, bool value, float* out);
  void reserve(std::int64_t max_context, std::int64_t max_step);
  void reset();

  std::int64_t seen() const { return seen_; }
  std::int64_t first_position() const { return p0_; }
  std::int64_t held(int h) const;
  std::int64_t max_held() const;
  std::int64_t compressed_tokens(int h, bool value) const;
  std::vector<std::int64_t> positions(int h) const;        // held tokens' positions
  std::vector<double> scores(int h) const;                 // the policy's scores of the held tokens
  std::vector<bool> stored_fp16(int h, bool value) const;  // token stored as an fp16 row
  const centroid_set& centroids(int h) const;
  const eviction_policy& policy() const { return *policy_; }
  bool indexed() const { return indexed_; }
  // Token streams whose compressed record was decoded and stored again, so far (guard promotions
  // into fp16, survivors of a broken per-channel block re-quantized).
  std::int64_t reencoded() const { return reencoded_; }

  // Adds this layer's pages: records by method kind (index kv_method_kind), fp16 rows, positions,
  // centroids. Returns the bytes held by its pages.
  std::size_t add_stats(method_bytes* compressed, method_bytes& fp16, method_bytes& index,
                        method_bytes& centroids, std::size_t& bytes_used,
                        std::size_t& bookkeeping) const;

 private:
  struct stream_state {
    std::unique_ptr<kv_codec> codec;
    paged_array fp16, records;
    std::int64_t n_comp = 0;  // tokens in records (whole blocks)
  };
  struct head_state {
    std::vector<double> score;         // [held]
    std::vector<std::int32_t> loc[2];  // [held] >= 0: fp16 row; < 0: -(1 + compressed index)
    paged_array index;                 // [held] int32 positions once indexed_
    centroid_set centroids;
  };

  std::int64_t position(const head_state& hs, std::int64_t i) const;
  void row_of(stream_state& s, std::int32_t loc, float* out);
  void evict();
  void relayout(int h, int kv, const std::vector<std::int64_t>& kept,
                const std::vector<std::uint8_t>& fp16_target, std::vector<std::int32_t>& new_loc);
  bool needs_relayout(int h, int kv, const std::vector<std::int64_t>& kept,
                      const std::vector<std::uint8_t>& fp16_target) const;

  layer_recipe lr_;
  evicting_layer_params p_;
  std::unique_ptr<eviction_policy> policy_;
  page_pool* pool_;
  std::vector<head_state> heads_;         // [n_kv]
  std::vector<stream_state> streams_[2];  // [K|V][n_kv]
  std::int64_t seen_ = 0, p0_ = 0, step_ = 0;
  bool indexed_ = false;
  std::int64_t reencoded_ = 0;
  // Scratch.
  std::vector<float> k_, v_, cbuf_, cs_, sn_, sc_, arow_, acc_, block_, row_;
  std::vector<std::int64_t> pos_;
  std::int64_t cached_rec_ = -1;
  const float* rope_inv_freq_ = nullptr;  // the cache's RoPE, as last given to attend()
  float rope_scaling_ = 1.0f;
  const stream_state* cached_stream_ = nullptr;
};

}  // namespace kvcal
