// LRU: the least recently *used* token goes first, where a token is used by a query when it
// receives more than its uniform share of that query's attention: A[i, j] > 1 / visible_i, A the
// GQA mean over the query heads of the group (as H2O). The score is 1 + the index of the layer's
// attend() call of the token's last use; a token arriving before call s scores s (so a token used
// in its own prefill outranks one that was not); older uses rank lower, ties go to the newer token.
#pragma once

#include "runtime/eviction/policy.h"

namespace kvcal {

class lru_policy : public eviction_policy {
 public:
  using eviction_policy::eviction_policy;
  bool uses_attention() const override { return true; }
  double on_append(int head, std::int64_t position, const float* key_pre, const float* maybe_hidden,
                   std::int64_t step) const override;
  void observe(const float* a, std::int64_t n, std::int64_t visible, std::int64_t step,
               double* scores) const override;
};

}  // namespace kvcal
