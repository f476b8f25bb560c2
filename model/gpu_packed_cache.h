// The model's KV-cache interface (model/kv_cache.h) on the GPU through the CUDA kernels of
// kernels/cuda/: a KIVI-style packed cache (K per-channel groups along tokens, V per-token
// groups, asymmetric 2/4/8-bit, fp16 residual window) or fp16 (bits 16), per layer.
//
//   append  keys before RoPE and values -> fp16 window ring (launch_kv_window_append), then the
//           tokens older than `residual` -> bit-packed records (launch_quant_compress); prompts are
//           appended in pieces so the ring stays small;
//   attend  one new token per sequence: the fused decode-attention kernel reads the packed
//           records and the window directly, rotating keys at their positions
//           (launch_decode_attention); a prompt (T > 1, empty cache): exact causal attention over
//           the prompt's own K/V, as KIVI does — the CPU runtime instead attends the prompt
//           through its compressed tokens (documented difference, docs/runtime.md).
//
// H2O eviction (options::h2o, bits 16 only; kernels/cuda/evict.h; options::window: the same
// layout for StreamingLLM's sinks + recent window, chosen by position only): each slot holds at
// most R + 1 rows (R = the budget at `capacity` tokens), keys stored AFTER RoPE (keys_rotated) in
// unordered rows with their positions and H2O scores. A prompt: exact causal attention as above,
// plus its H2O scores (column sums of the causal softmax, mean over the group's heads; one pass
// of kernels/cuda/h2o_prompt.h on flash's lse); the R(T) kept rows (select_kept) are then
// gathered into rows [0, R). A decode step: the token goes to the free row, decode attention
// also writes its logits / softmax statistics, the scores accumulate (h2o_accumulate) and the
// lowest-scored non-recent row is dropped (evict_one, the last row moves into its place).
// The rule is the CPU runtime's (runtime/eviction/evicting_layer.h: eviction at the end of
// attend, budget floor(retain x seen)); scores are fp32 here, double there.
//
// Learned eviction (options::learned): the same rows and kernels as H2O with heavy share 1 (the
// recent share is the fp16 window only), scores from the preset's scorer when tokens arrive
// (a prompt's too, for its select_kept), no logits and no accumulation.
//
// V latent mode (options::v_latent_rank; PCA / linear-AE values, knlp-v-pca-int8,
// hybrid-k2-vpca8): K fp16 (bits 16, every key in the ring) or KIVI per-channel records; V
// tokens leaving the window become the CPU linear codec's latent records (launch_latent_compress,
// byte-identical), decode attention runs on the latents (P Z) dec_w^T + (sum P) dec_b. The maps
// (fp32 [n_kv, r, d] / [n_kv, d, r] per layer) go to the device once, at construction.
// K latent mode (options::k_latent_rank; with the V latent mode of the same rank, head_dim 128:
// ae-16, K+V PCA): keys leaving the window become per-token latent records of the pre-RoPE key
// in the same launch as V's (the same range: K is compressed token by token, kv_rule group 1, so
// k_compressed == v_compressed, which the kernel requires); decode attention reconstructs each
// key, dec_w z + dec_b, and rotates it at its position (register-direct kernel). Adaptive
// presets (options::compress_after) keep everything fp16 until a sequence holds more than
// compress_after tokens, as the CPU cache does.
//
// Counters (tokens held, compressed ranges, eviction rows) live on the device, per layer. A
// prompt (T > 1, eager) writes them with one small host-to-device copy per piece; a decode step
// (T == 1) advances them on the device (kernels/cuda/kv_step.h) and launches every kernel with
// fixed grid bounds (at most one K block and one V token compressed per step, or the crossing of
// compress_after: kv_step_max_k_blocks / kv_step_max_v_tokens), so its launches
// are the same at every step and a CUDA graph can capture and replay it (graph_safe(), every
// mode; model/decode_graph.h). Nothing is read back; the host keeps a mirror of the counters for
// its checks and bytes_used (every sequence advances alike). Capacity is fixed at construction
// (allocated once). Needs a CUDA build with libtorch CUDA; elsewhere the constructor refuses.
//
//   kvcal::gpu_packed_cache::options o;  o.bits = 4;  o.group = 32;  o.residual = 128;
//   kvcal::gpu_packed_cache cache(model.config(), /*batch=*/8, /*capacity=*/33000, o, at::kCUDA);
//   model.forward(prompt, cache);  model.forward(next, cache);
//   cache.bytes_allocated();       // device bytes of records + windows
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "kernels/cuda/kv_counters.h"
#include "model/kv_cache.h"
#include "runtime/model_config.h"
#include "runtime/packed_support.h"

namespace kvcal {

class gpu_learned_scorer;

class gpu_packed_cache : public kv_cache {
 public:
  struct options {
    int bits = 16;       // 16 = fp16 (the whole context in the ring); 2 | 4 | 8 = quantized
    int group = 32;      // K: tokens per record (32 | 64 | 128); V: channels per scale group
    int residual = 128;  // newest tokens kept in fp16
    // Prompt tokens appended per window-append + compress round. The ring holds residual +
    // group + piece rows per (sequence, KV head): 256 keeps it at ~10% of a 2-bit cache's bytes
    // at 32k (1024 cost ~19%) for ~2% more prefill launches.
    int piece = 256;
    // H2O eviction (bits 16): budget floor(retain x seen) when retain > 0, else `tokens`; heavy
    // share by score, the rest (at least max(1, residual)) the newest tokens. Set `residual` to
    // the recipe's (0 for the h2o template): the KIVI default 128 widens the recent share.
    bool h2o = false;
    double heavy = 0.8;
    double retain = 0.0;
    int tokens = 0;
    // StreamingLLM window eviction (bits 16): the first `sinks` and the last `recent` tokens,
    // nothing by score (no logits or scores are computed). Same unordered-row layout.
    bool window = false;
    int sinks = 0;
    int recent = 0;
    // Learned eviction (bits 16; model/gpu_learned_scorer.h): each new token gets the preset
    // scorer's score per KV head, fixed; budget retain / tokens as H2O, the newest
    // max(1, residual) tokens protected, the rest kept by score (the CPU's learned rule).
    std::shared_ptr<const gpu_learned_scorer> learned;
    // Adaptive mode (knlp): nothing is compressed while a sequence holds <= compress_after
    // tokens, then the rule above with `residual` = max(residual, keep_recent) (the CPU cache's;
    // -1: off). The decode step that crosses it compresses compress_after + 1 - residual tokens.
    std::int64_t compress_after = -1;
    // V latent mode (PCA / linear AE values, kernels/cuda/packed_kv.h): v_latent_rank > 0 (16 |
    // 32 | 64 | 96 | 128, <= head_dim), latent bits 16 | 8 | 4 and the maps of every layer and
    // KV head (runtime/packed_support.h packed_latent_maps; uploaded once). `bits` is then K's:
    // 16 = fp16 keys (all in the ring), 2 | 4 | 8 = KIVI per-channel records of `group` tokens.
    int v_latent_rank = 0;
    int v_latent_bits = 16;
    std::shared_ptr<const latent_map_set> v_maps;
    // K latent mode (packed_kv.h; ae-16-style presets): k_latent_rank > 0 needs the V latent
    // mode of the same rank, head_dim 128 (the register-direct kernel) and bits 16; keys leaving
    // the window become per-token latent records of the pre-RoPE key (latent bits 16 | 8 | 4),
    // with the maps of every layer and KV head (packed_latent_maps(..., /*value=*/false, ...)).
    int k_latent_rank = 0;
    int k_latent_bits = 16;
    std::shared_ptr<const latent_map_set> k_maps;
    bool evicts() const { return h2o || window || learned; }
    bool v_latent() const { return v_latent_rank > 0; }
    bool k_latent() const { return k_latent_rank > 0; }
  };

  gpu_packed_cache(const model_config& cfg, std::int64_t batch, std::int64_t capacity,
                   const options& o, at::Device device);
  ~gpu_packed_cache() override;

  void append(int layer, const kv_append& kv) override;
  at::Tensor attend(int layer, const at::Tensor& q_rope, const at::Tensor& positions) override;
  std::int64_t length() const override;
  void reset() override;
  // Every mode's decode step is graph safe (see above).
  bool graph_safe() const override { return true; }
  std::int64_t graph_capacity() const override { return capacity_; }
  void set_host_length(std::int64_t n) override;

  // Device bytes allocated for records, windows and latent maps (every layer).
  std::size_t bytes_allocated() const;
  // Bytes the held tokens occupy: records in use + window rows of uncompressed tokens (the CPU
  // runtime's cache_stats::bytes_used; the maps are fixed_bytes()).
  std::size_t bytes_used() const;
  // Fixed device bytes independent of the context: the latent maps (fp32 enc / dec, every layer).
  std::size_t fixed_bytes() const;
  std::int64_t capacity() const { return capacity_; }
  // Rows allocated per (sequence, KV head): capacity, or R + 1 under eviction.
  int rows_per_slot() const { return win_cap_; }
  // Tokens held per (sequence, KV head) at `layer` (after eviction).
  std::int64_t held(int layer) const;
  // The device counters of `layer`, read back (synchronizes: tests only): int32
  // [kv_ctr_rows * B] then, under eviction, [ev_rows * B] (kernels/cuda/kv_counters.h).
  std::vector<int> device_counters(int layer) const;
  // Eviction: positions (int32) and scores (fp32) of the held rows of `layer`, each
  // [B, n_kv, held(layer)] on the device, rows in no particular order (tests compare kept sets).
  std::pair<at::Tensor, at::Tensor> held_rows(int layer) const;

 private:
  struct layer_state;
  struct device_maps;
  std::int64_t batch_, capacity_, n_kv_, n_heads_, d_, window_;
  options o_;
  kv_rule rule_;  // what is compressed when (kernels/cuda/kv_counters.h)
  int win_cap_ = 0;
  std::vector<std::unique_ptr<layer_state>> layers_;
  at::Tensor rope_cos_, rope_sin_;  // [capacity, d / 2] fp32 on the device
  float rope_scaling_ = 1.0f;
  at::Tensor workspace_;
  at::Tensor logits_, row_stats_;  // H2O: [B, n_heads, rows], [B, n_heads, 2] (shared by layers)
  at::Tensor prompt_evict(int layer, const at::Tensor& q_rope);  // a prompt's attention output
  void step_counters(int layer);
};

}  // namespace kvcal
