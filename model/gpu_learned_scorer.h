// The learned eviction scorer (runtime/eviction/learned.h) as batched libtorch matmuls, for the
// GPU cache (model/gpu_packed_cache.h, options::learned): the preset's per-layer policy tensors
// (layers.<l>.policy.*, docs/formats/preset.md) are copied to the device once as fp32, and the new
// tokens of one layer are scored in one go. Same math as learned_policy::score, in fp32 (the CPU
// accumulates in double):
//   hidden features  x = kv_append::hidden      [B, T, hidden]
//     linear  s = x W^T + b                                 -> [B, T, n_kv] -> [B, n_kv, T]
//     MLP     s = relu(x W1^T + b1) W2^T + b2
//   key features     x = kv_append::k_pre       [B, n_kv, T, d] (before RoPE)
//     linear  s[b, h, t] = W[h] . x[b, h, t] + b[h]
//     MLP     s[b, h, t] = W2[h] . relu(W1 x[b, h, t] + b1) + b2[h]
// Runs on any device (CPU tensors too: the tests compare it with the CPU scorer there).
//
//   kvcal::gpu_learned_scorer sc(recipe, file.tensors().tensors(), at::kCUDA, path);
//   at::Tensor s = sc.score(layer, kv);   // [B, n_kv, T] fp32 on the device
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "model/kv_cache.h"
#include "runtime/io/safetensors.h"
#include "runtime/preset_recipe.h"

namespace kvcal {

class gpu_learned_scorer {
 public:
  // Every layer of `r` must use the learned policy; `source` names the preset in errors.
  gpu_learned_scorer(const preset_recipe& r, const std::vector<tensor_view>& tensors,
                     at::Device device, const std::string& source);

  // Scores of the new tokens of `layer`: [B, n_kv, T] fp32 on the device of the inputs.
  at::Tensor score(int layer, const kv_append& kv) const;
  // The same from the features alone: hidden [B, T, in_dim] or keys [B, n_kv, T, d].
  at::Tensor score_features(int layer, const at::Tensor& x) const;

  int n_layers() const { return static_cast<int>(layers_.size()); }
  int n_kv_heads() const { return n_kv_; }
  policy_features features() const { return features_; }
  std::int64_t in_dim() const { return in_dim_; }
  // Device bytes of the weights (the fixed cost, every layer).
  std::size_t bytes() const;

 private:
  struct layer_weights {
    at::Tensor w1, b1;  // linear: [n_kv, in_dim], [n_kv]; MLP: [hidden, in_dim], [hidden]
    at::Tensor w2, b2;  // MLP: [n_kv, hidden], [n_kv]; undefined for linear
  };
  std::vector<layer_weights> layers_;
  int n_kv_ = 0;
  std::int64_t in_dim_ = 0, hidden_ = 0;
  policy_features features_ = policy_features::hidden;
};

}  // namespace kvcal
