// H2O scores of a prompt on the GPU (issue 11: the h2o preset's TTFT). For queries q
// [B, n_heads, T, d] and keys k [B, n_kv, T, d] (both after RoPE, bf16 or fp16) and the
// per-query log-sum-exp lse [B, n_heads, T] of the scaled causal logits (natural log, fp32; e.g.
// the one libtorch's flash attention returns), the column sums of the causal softmax, mean over
// the G = n_heads / n_kv query heads of each KV head (runtime/eviction/h2o.h):
//   score[b, g, j] = (1 / G) * sum over h in group g, j <= i < T (and i - j < window when
//                    window > 0) of exp(scale * q[b, h, i] . k[b, g, j] - lse[b, h, i])
// One pass over the causal half with tensor cores (mma.sync m16n8k16, fp32 accumulation); no
// [T, T] matrix in memory. One CTA per (slot, block of 128 keys) holds its keys in registers,
// streams the G heads' query blocks i >= j through shared memory and keeps the column sums in
// registers: every score is written once, deterministic (no atomics). Graph safe: allocates
// nothing, reads nothing back.
//
// Cost: B * n_heads * T^2 / 2 * d multiply-adds and B * n_heads * T^2 / 2 exponentials, i.e. about
// the QK^T half of a causal flash-attention forward.
//
//   kvcal::h2o_prompt_params p;  p.q = q.data_ptr();  p.lse = lse.data_ptr<float>(); ...
//   kvcal::check_launch(kvcal::launch_h2o_prompt_scores(p, stream), "h2o prompt scores");
#pragma once

#include <cstdint>

#include "kernels/cuda/packed_kv.h"

namespace kvcal {

struct h2o_prompt_params {
  int batch = 0, n_heads = 0, n_kv = 0;  // n_heads a multiple of n_kv
  int tokens = 0;                        // T >= 1 (queries and keys at positions 0 .. T-1)
  int head_dim = 0;                      // 64 | 128
  bool bf16 = true;                      // element type of q and k: bf16, else fp16
  // Element strides; channels contiguous. Pointers and strides 16-byte aligned (multiples of 8).
  const void* q = nullptr;  // [B, n_heads, T, d]
  std::int64_t q_stride_b = 0, q_stride_h = 0, q_stride_t = 0;
  const void* k = nullptr;  // [B, n_kv, T, d]
  std::int64_t k_stride_b = 0, k_stride_h = 0, k_stride_t = 0;
  const float* lse = nullptr;  // [B, n_heads, >= T] natural log, tokens contiguous
  std::int64_t lse_stride_b = 0, lse_stride_h = 0;
  float scale = 0.0f;      // logit scale, usually 1 / sqrt(d)
  int window = 0;          // > 0: query i sees keys i - window < j <= i (transformers' convention)
  float* score = nullptr;  // [B * n_kv, score_stride]: columns [0, T) written
  std::int64_t score_stride = 0;
};

cudaError_t launch_h2o_prompt_scores(const h2o_prompt_params& p, cudaStream_t stream);

}  // namespace kvcal
