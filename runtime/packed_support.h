// Which presets the CUDA kernels (kernels/cuda/packed_kv.h) can run, and as what: every layer the
// same KIVI-style quantization (K per-channel groups along tokens, V per-token groups,
// asymmetric, one bit width and group for K and V, an fp16 residual) or fp16; or fp16 with H2O,
// window (sinks + recent) or learned eviction (every layer the same policy and budget:
// kernels/cuda/evict.h; learned: a budget, not a threshold, and no adaptive mode); or the V
// latent mode: K fp16 or KIVI per-channel (2/4/8-bit,
// asymmetric) with V a PCA or linear autoencoder (hidden 0) latent of rank 16/32/64/96/128
// (<= head_dim) and 16/8/4 bits, without eviction; or the K latent mode on top of it: K a PCA or
// linear autoencoder latent of the V latent's rank (K latent bits 16/8/4), head_dim 128 only (the
// register-direct kernel reconstructs keys, then rotates them). No other policy, no guard, no
// per-head methods or budgets, no MLP autoencoders, no K latent without a V latent. Adaptive
// presets (compress_after / keep_recent) map as the CPU cache runs them: the fp16 window is
// max(residual, keep_recent) and nothing is compressed while a sequence holds at most
// compress_after tokens (the GPU cache's device counters follow the same rule,
// kernels/cuda/kv_counters.h; kvcal bench's contexts are all longer). Used by the GPU cache
// (model/gpu_packed_cache.h, `kvcal eval --gpu-kernels`) and `kvcal bench`, which name the reason
// for anything else instead of skipping it silently. packed_latent_maps reads the latent maps of
// an accepted preset from its tensors, for the GPU cache to upload.
//
//   kvcal::packed_config c;
//   std::string why = kvcal::packed_config_of(recipe, &c);   // empty: supported, c filled
//   if (c.v_latent()) vmaps = kvcal::packed_latent_maps(recipe, tensors, /*value=*/true, path);
//   if (c.k_latent()) kmaps = kvcal::packed_latent_maps(recipe, tensors, /*value=*/false, path);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/io/safetensors.h"
#include "runtime/kv_codec.h"
#include "runtime/preset_recipe.h"

namespace kvcal {

struct packed_config {
  int bits = 16;   // K (and V unless latent): 16 = fp16; 2 | 4 | 8 = quantized records
  int group = 32;  // K: tokens per record; V (quantized): channels per scale group
  // V records' width when quantized and not latent (<= bits; != bits: mixed widths, 3 bits: the
  // register-direct kernel only); 16 otherwise.
  int v_bits = 16;
  int residual = 0;  // fp16 recent window (tokens) before records are made
  // H2O eviction (bits 16 only): budget R = floor(retain x seen) when retain > 0, else `tokens`;
  // heavy share of R by score, the rest (at least max(1, residual)) the newest tokens.
  bool h2o = false;
  double heavy = 0.8;
  double retain = 0.0;
  int tokens = 0;
  // StreamingLLM window eviction (bits 16 only): the first `sinks` and the last `recent` tokens.
  bool window = false;
  int sinks = 0;
  int recent = 0;
  // Learned eviction (bits 16 only): the preset's scorer (layers.<l>.policy.*) scores each token
  // when it arrives; budget `retain` / `tokens` as h2o; the newest max(1, residual) tokens are
  // protected (learned_policy::recent), the rest kept by score.
  bool learned = false;
  // Adaptive presets: no records while a sequence holds <= compress_after tokens (-1: off).
  std::int64_t compress_after = -1;
  // V latent mode: v_latent_kind pca | ae (linear), else none (off). v_latent_rank 0 only for
  // a template whose rank comes from the PCA file at export (the caller chooses one).
  kv_method_kind v_latent_kind = kv_method_kind::none;
  int v_latent_rank = 0;
  int v_latent_bits = 16;  // 16 | 8 | 4
  bool v_latent() const { return v_latent_kind != kv_method_kind::none; }
  // K latent mode (with the V latent mode of the same rank; head_dim 128, the register-direct
  // kernel): k_latent_kind pca | ae (linear), per-token latent records of the pre-RoPE key
  // (latent bits 16 | 8 | 4, independent of V's); `bits` is then 16 and unused.
  kv_method_kind k_latent_kind = kv_method_kind::none;
  int k_latent_rank = 0;
  int k_latent_bits = 16;
  bool k_latent() const { return k_latent_kind != kv_method_kind::none; }
};

// Empty when the kernels can run `r` (then *out is its configuration), else the reason.
std::string packed_config_of(const preset_recipe& r, packed_config* out);

// The fp32 encoder / decoder maps of one stream's latents, [layer][KV head] (each rank x d).
using latent_map_set = std::vector<std::vector<linear_maps>>;
// The maps of every layer's V (value) or K latents of `r` (PCA: pca_maps of basis and mean;
// linear AE: its weights; runtime/kv_codec.h), read from the preset's tensors. Errors name
// `source` and the tensor or the layer whose method is not a linear latent.
latent_map_set packed_latent_maps(const preset_recipe& r, const std::vector<tensor_view>& tensors,
                                  bool value, const std::string& source);

}  // namespace kvcal
