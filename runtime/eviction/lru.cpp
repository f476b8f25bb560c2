#include "runtime/eviction/lru.h"

namespace kvcal {

double lru_policy::on_append(int, std::int64_t, const float*, const float*,
                             std::int64_t step) const {
  return static_cast<double>(step);
}

void lru_policy::observe(const float* a, std::int64_t n, std::int64_t visible, std::int64_t step,
                         double* scores) const {
  if (visible <= 0) return;
  const double uniform = 1.0 / static_cast<double>(visible);
  for (std::int64_t i = 0; i < n; ++i)
    if (static_cast<double>(a[i]) > uniform) scores[i] = static_cast<double>(step + 1);
}

}  // namespace kvcal
