#include "runtime/eviction/window.h"

#include <algorithm>

namespace kvcal {

std::int64_t window_policy::recent(std::int64_t R) const {
  return R - std::min(R, sinks());
}

double window_policy::on_append(int, std::int64_t position, const float*, const float*,
                                std::int64_t) const {
  return static_cast<double>(position);
}

}  // namespace kvcal
