// The compressed KV cache (CPU reference): built from a preset recipe (+ its tensors) and the
// model's dimensions; per layer, `append` stores new tokens' keys (before RoPE) and values,
// `attend` runs causal GQA attention of new queries over everything held.
//
// Per (layer, KV head, K|V) a stream holds its tokens in three parts, in token order:
//   sinks       the first `sinks` tokens, fp16, never compressed (attention sinks; a cache option
//               of layers without eviction — evicting layers use the window policy's sinks)
//   compressed  records of the layer's method for that head (runtime/kv_codec.h): quantized
//               (per-token, or per-channel blocks of `group` tokens), PCA / AE latents, or fp16
//   window      fp16: the recent `max(residual, adaptive keep_recent)` tokens, plus tokens that
//               wait for a per-channel group to fill (KIVI residual)
// A token leaves the window for the codec once it is older than the window; in adaptive mode
// nothing is compressed while the layer holds at most `compress_after` tokens. K is stored
// before RoPE: attend reconstructs keys and rotates them at their original positions (the
// preset's RoPE parameters, runtime/rope.h). V of linear methods (PCA, linear AE) is attended in
// latent space, out = (P Z) W_d^T + (sum P) b_d (DESIGN.md §3.2); a rotated key does not factor
// through a fixed basis (R_p depends on the token), so PCA/AE keys are reconstructed, then rotated.
// MLP autoencoders (ae with hidden > 0) are not linear: K and V are reconstructed, then attended.
//
// Memory: paged (runtime/kv_store.h), pages sized in tokens (`page_tokens`); stats() reports
// bytes held by pages as allocated, bytes used by live records, per method and per layer.
// After reserve(max_context, max_new_tokens) append and attend allocate nothing (the scratch of
// attention is O(tokens x head_dim) per layer, sized there).
//
// Token eviction (issue 10): a layer whose recipe has a token policy other than `full` (window,
// h2o, lru, cluster, learned), a budget or a guard is held by runtime/eviction/evicting_layer.h:
// per KV head a budget of tokens chosen by the policy from the attention attend() computes,
// stored positions for RoPE, fp16 guard tokens, cluster centroids; eviction runs at the end of
// attend(). Appended positions must be consecutive. Batch 1 (one sequence; the model adapter
// loops over rows with one cache each). Not thread-safe.
//
//   kvcal::preset_file p("kivi-2.safetensors");
//   kvcal::compressed_cache cache(p.recipe(), p.tensors().tensors(), {28, 28, 4, 128, 32768});
//   cache.reserve(8192, 512);
//   cache.append(l, k_pre, v, pos, T);      // k_pre, v: [T, n_kv, d]   pos: [T]
//   cache.attend(l, q_rope, pos, T, out);   // q_rope, out: [n_heads, T, d]
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "runtime/io/safetensors.h"
#include "runtime/kv_codec.h"
#include "runtime/kv_store.h"
#include "runtime/preset_recipe.h"

namespace kvcal {

class evicting_layer;

struct cache_dims {
  int n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  std::int64_t max_position_embeddings = 0;  // dynamic / yarn / llama3 RoPE (0 = not given)
  // Attention's sliding window (Mistral; 0 = none): a query at position p sees the held tokens
  // at positions p - window < j <= p, as transformers. A mask only: nothing is evicted.
  std::int64_t sliding_window = 0;
};

struct cache_options {
  int page_tokens = 64;             // tokens per page (per-channel blocks: whole groups per page)
  std::int64_t sinks = 0;           // first tokens kept fp16 forever
  std::optional<rope_config> rope;  // default: the RoPE of the preset's model fingerprint
};

struct method_bytes {
  std::int64_t tokens = 0;     // token-streams (tokens x KV heads x K/V) in this form
  std::size_t bytes_held = 0;  // pages
  std::size_t bytes_used = 0;  // live records
};

struct cache_stats {
  std::vector<std::int64_t> tokens;           // [n_layers] tokens held per layer
  std::vector<std::size_t> layer_bytes_held;  // [n_layers]
  std::size_t bytes_held = 0;          // pages attached to the cache (what it holds, as allocated)
  std::size_t bytes_used = 0;          // live records inside them (held - used = page slack)
  std::size_t bytes_reserved = 0;      // all pages obtained from the system (held + pool free list)
  std::size_t system_allocations = 0;  // page allocations from the system so far
  std::size_t fixed_bytes = 0;         // codec weights (bases, means, AE maps) in fp32
  double fp16_bytes = 0;               // the same tokens as fp16 K+V
  // Compressed records by method (index: kv_method_kind), and the fp16 sinks + windows.
  std::array<method_bytes, 4> compressed{};
  method_bytes fp16_window;  // under eviction: every fp16 row (window, sinks, guard, leftovers)
  method_bytes index;        // eviction: int32 positions of held tokens (tokens: per KV head)
  method_bytes centroids;    // cluster policy: fp16 K and V centroids (tokens: centroids)
  std::size_t bookkeeping_bytes = 0;  // eviction's token tables (scores, places), heap, not pages
  // Eviction, so far: token streams whose record was decoded and stored again (a guard promotion
  // into fp16, or a per-channel block that lost a member re-quantized) — a second rounding.
  std::int64_t reencoded = 0;
  double ratio() const { return bytes_held ? fp16_bytes / static_cast<double>(bytes_held) : 0; }
};

class compressed_cache {
 public:
  // Validates the recipe against `dims` (layers, KV heads, head_dim; n_heads a multiple of
  // n_kv_heads) and `tensors` against the recipe (token policies, budgets and guard are handled by
  // runtime/eviction/). `source` names the preset in errors.
  compressed_cache(const preset_recipe& r, const std::vector<tensor_view>& tensors,
                   const cache_dims& dims, const cache_options& opt = {},
                   const std::string& source = "preset");
  ~compressed_cache();
  compressed_cache(const compressed_cache&) = delete;
  compressed_cache& operator=(const compressed_cache&) = delete;

  // Sizes pages and scratch for up to `max_context` tokens per layer, appended and attended at
  // most `max_step` tokens at a time: afterwards append / attend allocate nothing.
  void reserve(std::int64_t max_context, std::int64_t max_step);

  // k_pre, v: [T, n_kv, d] (keys before RoPE); positions: [T], consecutive, continuing the layer.
  // maybe_hidden: [T, hidden_size], the hidden state entering attention (learned eviction on
  // hidden-state features needs it; ignored otherwise).
  void append(int layer, const float* k_pre, const float* v, const std::int64_t* positions,
              std::int64_t T, const float* maybe_hidden = nullptr, std::int64_t hidden_size = 0);
  // q_rope: [n_heads, T, d] (queries after RoPE); positions: [T]; out: [n_heads, T, d].
  // Query t sees the held tokens at positions <= positions[t] (and > positions[t] - window with
  // a sliding window); at least one must be held.
  void attend(int layer, const float* q_rope, const std::int64_t* positions, std::int64_t T,
              float* out);

  // Keys (before RoPE) or values of one KV head as the cache would attend them. out: [length, d].
  void reconstruct(int layer, int kv_head, bool value, float* out);

  // Tokens held by the layer (under eviction: the most any KV head holds).
  std::int64_t length(int layer) const;
  // Tokens appended to the layer (the next position is first_position + seen).
  std::int64_t seen(int layer) const;
  std::int64_t first_position(int layer) const;
  // The layer's eviction state (policies, positions, scores, centroids), null under `full`
  // without a guard.
  const evicting_layer* eviction(int layer) const;
  // Tokens of this stream held by its codec (not in sinks or the fp16 window).
  std::int64_t compressed_tokens(int layer, int kv_head, bool value) const;
  cache_stats stats() const;
  // Forgets every token; pages go back to the pool (kept for the next sequence).
  void reset();

  const cache_dims& dims() const { return dims_; }
  const preset_recipe& recipe() const { return recipe_; }

 private:
  struct stream;
  struct layer_state;
  void compress(int layer);
  void decode_stream(stream& s, std::int64_t n, bool skip_latent, float* out);
  float* scratch(std::vector<float>& v, std::size_t n);

  preset_recipe recipe_;
  cache_dims dims_;
  cache_options opt_;
  std::vector<std::int64_t> layer_window_;  // [n_layers] fp16 recent window in tokens
  page_pool pool_;
  std::vector<std::unique_ptr<layer_state>> layers_;
  std::size_t fixed_bytes_ = 0;
  // RoPE
  rope_config rope_;
  std::vector<float> inv_freq_;  // [d / 2]
  float attention_scaling_ = 1.0f;
  // Attention scratch (reserve() sizes them).
  std::vector<float> k_, v_, z_, scores_, pz_, acc_, block_;
  // RoPE tables [tokens, d / 2] for positions rope_p0_ .. rope_p0_ + rope_valid_ - 1, shared by
  // the layers (they hold the same positions), extended as tokens arrive.
  std::vector<float> cos_, sin_;
  std::int64_t rope_p0_ = 0, rope_valid_ = 0;
};

}  // namespace kvcal
