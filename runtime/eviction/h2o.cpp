#include "runtime/eviction/h2o.h"

#include <algorithm>
#include <cmath>

namespace kvcal {

std::int64_t h2o_policy::recent(std::int64_t R) const {
  const auto heavy =
      static_cast<std::int64_t>(std::floor(lr_.policy.heavy * static_cast<double>(R)));
  return std::max(eviction_policy::recent(R), R - heavy);
}

void h2o_policy::observe(const float* a, std::int64_t n, std::int64_t, std::int64_t,
                         double* scores) const {
  for (std::int64_t i = 0; i < n; ++i) scores[i] += static_cast<double>(a[i]);
}

}  // namespace kvcal
