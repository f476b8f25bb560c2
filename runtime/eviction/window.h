// Sliding window and attention sinks + window (StreamingLLM, Xiao et al. 2023): per KV head the
// first `sinks` tokens and the last `recent` tokens are kept, nothing else. The choice is by
// position only; the score (the token's position) only ranks the high-precision guard, newer
// tokens first. Positions of a window cache are implied (sinks, then consecutive up to the
// newest), so the cache stores none.
#pragma once

#include "runtime/eviction/policy.h"

namespace kvcal {

class window_policy : public eviction_policy {
 public:
  using eviction_policy::eviction_policy;
  // Everything but the sinks is the recent window: R - min(R, sinks).
  std::int64_t recent(std::int64_t R) const override;
  double on_append(int head, std::int64_t position, const float* key_pre, const float* maybe_hidden,
                   std::int64_t step) const override;
};

}  // namespace kvcal
