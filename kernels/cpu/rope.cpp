#include "kernels/cpu/rope.h"

#include <cmath>

namespace kvcal {

void rope_cos_sin(std::int64_t pos, const float* inv_freq, int d, float attention_scaling,
                  float* cos, float* sin) {
  const float p = static_cast<float>(pos);
  for (int i = 0; i < d / 2; ++i) {
    const float a = p * inv_freq[i];
    cos[i] = std::cos(a) * attention_scaling;
    sin[i] = std::sin(a) * attention_scaling;
  }
}

void apply_rope(float* x, int d, const float* cos, const float* sin) {
  const int h = d / 2;
  for (int i = 0; i < h; ++i) {
    const float a = x[i], b = x[i + h];
    x[i] = a * cos[i] - b * sin[i];
    x[i + h] = b * cos[i] + a * sin[i];
  }
}

}  // namespace kvcal
