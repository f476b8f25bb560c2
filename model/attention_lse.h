// A prompt's causal attention together with each query's log-sum-exp, for the GPU cache's H2O
// prompt scores (kernels/cuda/h2o_prompt.h), so that the scores need no second QK^T pass for
// the softmax statistics.
//
//   causal_attention_lse   q [B, H, T, d], k, v [B, n_kv, T, d] (after RoPE, CUDA, bf16 or fp16;
//                          queries and keys both at positions 0 .. T-1, no sliding window):
//                          out [B, H, T, d] in q's dtype and lse [B, H, T] fp32, natural log of
//                          sum over j <= i of exp(q_i . k_j / sqrt(d)), from one call of
//                          libtorch's flash kernel (at::_scaled_dot_product_flash_attention,
//                          libtorch >= 2.0; GQA by repeating K/V heads, as causal_attention).
//                          Elsewhere out comes from causal_attention and lse from the reference.
//   causal_lse_reference   the same lse by explicit fp32 math in chunks of queries (any device,
//                          any dtype; the [B, H, chunk, T] logits stay near 512 MB): the fallback
//                          and a test reference.
//   h2o_scores_reference   the prompt's H2O scores [B, n_kv, T] fp32 by the chunked fp32 loop
//                          gpu_packed_cache ran before kernels/cuda/h2o_prompt.h (softmax of
//                          chunks of queries, column sums, group mean): test reference and
//                          benchmark baseline.
#pragma once

#include <ATen/ATen.h>

namespace kvcal {

struct attention_lse {
  at::Tensor out;  // [B, H, T, d], q's dtype
  at::Tensor lse;  // [B, H, T] fp32 (contiguous in T; may be a view of a padded buffer)
};

attention_lse causal_attention_lse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);
at::Tensor causal_lse_reference(const at::Tensor& q, const at::Tensor& k);
at::Tensor h2o_scores_reference(const at::Tensor& q, const at::Tensor& k);

// Whether causal_attention_lse runs the flash kernel for these inputs (else the fallback).
bool flash_lse_available(const at::Tensor& q);

}  // namespace kvcal
