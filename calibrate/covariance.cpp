#include "calibrate/covariance.h"

#include <Eigen/Dense>
#include <future>
#include <thread>

#include "kernels/common/error.h"

namespace kvcal {

namespace {
using mat_rm = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using fmap = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                        0, Eigen::OuterStride<>>;
}  // namespace

void cov_stats::reset(std::int64_t dim) {
  d = dim;
  count = 0;
  mean.assign(static_cast<size_t>(dim), 0.0);
  m2.assign(static_cast<size_t>(dim * dim), 0.0);
}

void cov_stats::merge(double n_b, const double* mean_b, const double* m2_b) {
  if (n_b <= 0) return;
  const double n_a = count, n = n_a + n_b;
  const size_t dd = static_cast<size_t>(d);
  std::vector<double> delta(dd);
  for (size_t i = 0; i < dd; ++i) delta[i] = mean_b[i] - mean[i];
  const double w = n_a * n_b / n;
  for (size_t i = 0; i < dd; ++i) {
    double* row = m2.data() + i * dd;
    const double* row_b = m2_b + i * dd;
    const double di = delta[i] * w;
    for (size_t j = 0; j < dd; ++j) row[j] += row_b[j] + di * delta[j];
  }
  for (size_t i = 0; i < dd; ++i) mean[i] += delta[i] * (n_b / n);
  count = n;
}

std::vector<double> cov_stats::covariance(bool centered) const {
  KVCAL_CHECK(count > 0, "covariance of zero vectors");
  const size_t dd = static_cast<size_t>(d);
  std::vector<double> c(dd * dd);
  for (size_t i = 0; i < dd; ++i)
    for (size_t j = 0; j < dd; ++j)
      c[i * dd + j] = m2[i * dd + j] / count + (centered ? 0.0 : mean[i] * mean[j]);
  return c;
}

void accumulate_block_cpu(cov_stats& s, const float* x, std::int64_t n, std::int64_t d,
                          std::int64_t stride) {
  KVCAL_ASSERT(s.d == d, "cov_stats dimension mismatch");
  if (n <= 0) return;
  const mat_rm xb = fmap(x, n, d, Eigen::OuterStride<>(stride)).cast<double>();
  const Eigen::RowVectorXd mu = xb.colwise().mean();
  const mat_rm c = xb.rowwise() - mu;
  mat_rm g = mat_rm::Zero(d, d);
  g.selfadjointView<Eigen::Lower>().rankUpdate(c.transpose());
  g.triangularView<Eigen::StrictlyUpper>() = g.transpose();
  s.merge(static_cast<double>(n), mu.data(), g.data());
}

void accumulate_rows_cpu(std::vector<cov_stats>& stats, const float* x, std::int64_t rows,
                         std::int64_t n_kv, std::int64_t d) {
  if (stats.size() == 1 && n_kv != 1) {
    accumulate_block_cpu(stats[0], x, rows * n_kv, d, d);
    return;
  }
  KVCAL_ASSERT(static_cast<std::int64_t>(stats.size()) == n_kv, "one cov_stats per KV head");
  // Heads are independent: one task each beside this thread (same result as in sequence).
  const bool parallel =
      n_kv > 1 && rows * d * d >= (1 << 20) && std::thread::hardware_concurrency() > 1;
  std::vector<std::future<void>> tasks;
  for (std::int64_t h = 1; h < n_kv && parallel; ++h)
    tasks.push_back(std::async(std::launch::async, [&, h] {
      accumulate_block_cpu(stats[static_cast<size_t>(h)], x + h * d, rows, d, n_kv * d);
    }));
  for (std::int64_t h = 0; h < (parallel ? 1 : n_kv); ++h)
    accumulate_block_cpu(stats[static_cast<size_t>(h)], x + h * d, rows, d, n_kv * d);
  for (auto& t : tasks) t.get();
}

cov_stats two_pass_stats(const float* x, std::int64_t n, std::int64_t d, std::int64_t stride) {
  cov_stats s(d);
  s.count = static_cast<double>(n);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < d; ++j) s.mean[j] += x[i * stride + j];
  for (auto& m : s.mean) m /= static_cast<double>(n);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t a = 0; a < d; ++a) {
      const double da = x[i * stride + a] - s.mean[a];
      for (std::int64_t b = 0; b < d; ++b) s.m2[a * d + b] += da * (x[i * stride + b] - s.mean[b]);
    }
  return s;
}

}  // namespace kvcal
