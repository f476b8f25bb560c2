// Random orthonormal rows for synthetic PCA bases (the decode benchmark's V latent cases and the
// CUDA kernel tests): normal draws, orthonormalised by Gram-Schmidt with dot products in double.
//   std::normal_distribution<float> nd(0.0f, 1.0f);
//   std::vector<float> basis = kvcal::random_orthonormal_rows(rng, nd, r, d);  // [r, d]
#pragma once

#include <cmath>
#include <cstddef>
#include <random>
#include <vector>

namespace kvcal {

// [r, d] row-major; draws r * d values from nd(rng), row by row.
inline std::vector<float> random_orthonormal_rows(std::mt19937& rng,
                                                  std::normal_distribution<float>& nd, int r,
                                                  int d) {
  const std::size_t D = static_cast<std::size_t>(d), R = static_cast<std::size_t>(r);
  std::vector<float> basis(R * D);
  for (std::size_t i = 0; i < R; ++i) {
    float* row = &basis[i * D];
    for (std::size_t c = 0; c < D; ++c) row[c] = nd(rng);
    for (std::size_t j = 0; j < i; ++j) {
      const float* o = &basis[j * D];
      double dot = 0;
      for (std::size_t c = 0; c < D; ++c) dot += static_cast<double>(row[c]) * o[c];
      for (std::size_t c = 0; c < D; ++c) row[c] -= static_cast<float>(dot) * o[c];
    }
    double nrm = 0;
    for (std::size_t c = 0; c < D; ++c) nrm += static_cast<double>(row[c]) * row[c];
    for (std::size_t c = 0; c < D; ++c) row[c] = static_cast<float>(row[c] / std::sqrt(nrm));
  }
  return basis;
}

}  // namespace kvcal
