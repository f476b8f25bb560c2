// Streaming mean and covariance of d-dimensional vectors, in fp64, merged block by block with
// Chan et al.'s parallel formula (DESIGN.md §3.7): each block of rows is reduced on its own
// (double on CPU; fp32 GEMM on centred data on GPU, calibrate/covariance_gpu.h) to
// (n_b, mean_b, M2_b), then
//   delta = mean_b - mean_a,  n = n_a + n_b
//   mean  = mean_a + delta * n_b / n
//   M2    = M2_a + M2_b + delta delta^T * n_a n_b / n
// so any split of the rows into blocks gives the same result up to rounding, and large means do
// not cancel against small variances.
//
// Covariance uses divisor n (numpy: np.cov(x, rowvar=False, bias=True)); uncentred PCA uses the
// second moment E[x x^T] = M2 / n + mean mean^T.
//
//   kvcal::cov_stats s(d);
//   kvcal::accumulate_block_cpu(s, x, n_rows, d, /*stride=*/d);   // repeat per block
//   std::vector<double> c = s.covariance(/*centered=*/true);      // [d, d] row-major
#pragma once

#include <cstdint>
#include <vector>

namespace kvcal {

struct cov_stats {
  std::int64_t d = 0;
  double count = 0;
  std::vector<double> mean;  // [d]
  std::vector<double> m2;    // [d, d] row-major, full (both triangles)

  cov_stats() = default;
  explicit cov_stats(std::int64_t dim) { reset(dim); }
  void reset(std::int64_t dim);
  // Chan's merge of another partial result (mean_b [d], m2_b [d, d]) of n_b vectors.
  void merge(double n_b, const double* mean_b, const double* m2_b);
  void merge(const cov_stats& b) { merge(b.count, b.mean.data(), b.m2.data()); }
  // [d, d] row-major, divisor count; centered = false: the second moment about zero.
  std::vector<double> covariance(bool centered) const;
};

// Reduces n vectors of d floats (vector i at x + i * stride) in double and merges them into s.
void accumulate_block_cpu(cov_stats& s, const float* x, std::int64_t n, std::int64_t d,
                          std::int64_t stride);

// A block of capture rows [rows, n_kv, d]: per KV head into stats[h] (stats.size() == n_kv), or
// pooled across heads into stats[0] (stats.size() == 1: rows * n_kv vectors).
void accumulate_rows_cpu(std::vector<cov_stats>& stats, const float* x, std::int64_t rows,
                         std::int64_t n_kv, std::int64_t d);

// Reference: two passes over all vectors in double (mean, then centred outer products), for tests.
cov_stats two_pass_stats(const float* x, std::int64_t n, std::int64_t d, std::int64_t stride);

}  // namespace kvcal
