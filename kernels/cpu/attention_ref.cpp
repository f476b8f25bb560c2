#include "kernels/cpu/attention_ref.h"

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/common/error.h"

namespace kvcal {

void attention_dense_ref(const float* q, const float* k, const float* v, const std::int64_t* q_pos,
                         const std::int64_t* k_pos, int n_heads, int n_kv, std::int64_t T,
                         std::int64_t N, int d, float* out) {
  KVCAL_CHECK(n_kv > 0 && n_heads % n_kv == 0, "attention: ", n_heads,
              " query heads are not a multiple of ", n_kv, " KV heads");
  const int rep = n_heads / n_kv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> s(static_cast<std::size_t>(N));
  for (int h = 0; h < n_heads; ++h) {
    const int g = h / rep;
    const float* kg = k + static_cast<std::int64_t>(g) * N * d;
    const float* vg = v + static_cast<std::int64_t>(g) * N * d;
    for (std::int64_t t = 0; t < T; ++t) {
      const float* qt = q + (static_cast<std::int64_t>(h) * T + t) * d;
      float* ot = out + (static_cast<std::int64_t>(h) * T + t) * d;
      double mx = -std::numeric_limits<double>::infinity();
      for (std::int64_t j = 0; j < N; ++j) {
        if (k_pos[j] > q_pos[t]) {
          s[static_cast<std::size_t>(j)] = -std::numeric_limits<double>::infinity();
          continue;
        }
        double acc = 0;
        for (int c = 0; c < d; ++c) acc += static_cast<double>(qt[c]) * kg[j * d + c];
        s[static_cast<std::size_t>(j)] = acc * scale;
        mx = std::max(mx, acc * scale);
      }
      for (int c = 0; c < d; ++c) ot[c] = 0;
      if (mx == -std::numeric_limits<double>::infinity()) continue;
      double sum = 0;
      for (std::int64_t j = 0; j < N; ++j) {
        double& e = s[static_cast<std::size_t>(j)];
        e = std::isinf(e) ? 0.0 : std::exp(e - mx);
        sum += e;
      }
      std::vector<double> acc(static_cast<std::size_t>(d), 0.0);
      for (std::int64_t j = 0; j < N; ++j) {
        const double p = s[static_cast<std::size_t>(j)] / sum;
        if (p == 0) continue;
        for (int c = 0; c < d; ++c) acc[static_cast<std::size_t>(c)] += p * vg[j * d + c];
      }
      for (int c = 0; c < d; ++c) ot[c] = static_cast<float>(acc[static_cast<std::size_t>(c)]);
    }
  }
}

}  // namespace kvcal
