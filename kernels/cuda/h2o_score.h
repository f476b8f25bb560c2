// H2O score accumulation on the GPU (issue 11): after one decode step, each held row of a slot
// (sequence b, KV head g) gains the attention the step's query gave it, the mean over the G query
// heads of the group (the CPU's GQA reduction, runtime/eviction/h2o.h):
//   score[slot, t] += (1 / G) * sum over h in the group of exp2(logits[b, h, t] - max[b, h]) /
//   sum[b, h]     for t < held[b]
// with logits / row_stats = (max, sum) the optional outputs of decode attention
// (kernels/cuda/decode_attention.h, log2 units). The per-head terms are summed in fp32 in head
// order, as the CPU sums its float row before adding it to the (double) score. Graph safe:
// allocates nothing, reads nothing back.
//
//   kvcal::h2o_accumulate_params a;  a.logits = p.logits;  a.row_stats = p.row_stats; ...
//   kvcal::check_launch(kvcal::launch_h2o_accumulate(a, stream), "h2o accumulate");
#pragma once

#include "kernels/cuda/packed_kv.h"

namespace kvcal {

struct h2o_accumulate_params {
  int batch = 0, n_kv = 0, n_heads = 0;  // n_heads a multiple of n_kv
  int max_tokens = 0;                    // row stride of logits; held[b] <= max_tokens
  const float* logits = nullptr;         // [B, n_heads, max_tokens]
  const float* row_stats = nullptr;      // [B, n_heads, 2] (max, sum)
  const int* held = nullptr;             // [B] rows attended (device)
  float* score = nullptr;                // [B, n_kv, score_stride]
  int score_stride = 0;                  // >= max_tokens
};

cudaError_t launch_h2o_accumulate(const h2o_accumulate_params& p, cudaStream_t stream);

}  // namespace kvcal
