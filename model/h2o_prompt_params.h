// The H2O prompt-score kernel's parameters (kernels/cuda/h2o_prompt.h) filled from tensors, for
// the GPU cache, its test and its benchmark. Header-only: included only where CUDA is.
//
//   h2o_prompt_params p = h2o_prompt_params_of(q, k, a.lse, score, 1.0 / std::sqrt(d));
//   p.window = w;  // optional; then launch_h2o_prompt_scores(p, stream)
#pragma once

#include <ATen/ATen.h>

#include "kernels/cuda/h2o_prompt.h"

namespace kvcal {

// q [B, n_heads, T, d], k [B, n_kv, T, d] (bf16 or fp16, strides the kernel takes), lse
// [B, n_heads, >= T] fp32, score [B, n_kv, S >= T] fp32 contiguous (its rows of S are the
// kernel's score_stride). window stays 0.
inline h2o_prompt_params h2o_prompt_params_of(const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& lse, const at::Tensor& score,
                                              double scale) {
  h2o_prompt_params p;
  p.batch = static_cast<int>(q.size(0));
  p.n_heads = static_cast<int>(q.size(1));
  p.n_kv = static_cast<int>(k.size(1));
  p.tokens = static_cast<int>(q.size(2));
  p.head_dim = static_cast<int>(q.size(3));
  p.bf16 = q.scalar_type() == at::kBFloat16;
  p.q = q.data_ptr();
  p.q_stride_b = q.stride(0);
  p.q_stride_h = q.stride(1);
  p.q_stride_t = q.stride(2);
  p.k = k.data_ptr();
  p.k_stride_b = k.stride(0);
  p.k_stride_h = k.stride(1);
  p.k_stride_t = k.stride(2);
  p.lse = lse.data_ptr<float>();
  p.lse_stride_b = lse.stride(0);
  p.lse_stride_h = lse.stride(1);
  p.scale = static_cast<float>(scale);
  p.score = score.data_ptr<float>();
  p.score_stride = score.stride(1);
  return p;
}

}  // namespace kvcal
