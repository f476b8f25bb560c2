// H2O heavy hitters + recent (Zhang et al. 2023): a token's score is the attention it has
// received so far, summed over every query that saw it (its own included), from the attention
// the cache itself computes in attend(). GQA reduction as the capture's attn_cum
// (docs/formats/capture.md): the mean over the query heads of the KV head's group, applied to
// the probabilities before summing over queries:
//   score[j] += (1 / G) * sum over the G query heads h of the group of P_h[i, j]   per query i
// Of R retained tokens the newest R - floor(heavy x R) are kept as the recent share (at least the
// fp16 window and the newest token), the other floor(heavy x R) by score.
#pragma once

#include "runtime/eviction/policy.h"

namespace kvcal {

class h2o_policy : public eviction_policy {
 public:
  using eviction_policy::eviction_policy;
  std::int64_t recent(std::int64_t R) const override;
  bool uses_attention() const override { return true; }
  void observe(const float* a, std::int64_t n, std::int64_t visible, std::int64_t step,
               double* scores) const override;
};

}  // namespace kvcal
