// fit-pca (calibrate/): streaming covariance, eigensolve, rank allocation, the pca.h5 format, the
// command end to end on synthetic captures, bad input, and `kvcal export --pca`.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <cmath>
#include <random>
#include <vector>

#include "calibrate/covariance.h"
#include "calibrate/eigensolve.h"
#include "calibrate/rank_allocation.h"
#include "kernels/common/error.h"
#include "tests/test_util.h"

using namespace kvcal;

namespace {

// n vectors of d floats, correlated, with large means (cancellation would show).
std::vector<float> random_rows(std::int64_t n, std::int64_t d, unsigned seed, float mean_scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0, 1);
  std::vector<float> mix(static_cast<size_t>(d * d)), mu(static_cast<size_t>(d));
  for (auto& v : mix) v = g(rng) / std::sqrt(static_cast<float>(d));
  for (auto& v : mu) v = mean_scale * g(rng);
  std::vector<float> x(static_cast<size_t>(n * d)), z(static_cast<size_t>(d));
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < d; ++j) z[j] = g(rng) * (1.0f + 3.0f * (j % 7 == 0));
    for (std::int64_t j = 0; j < d; ++j) {
      float s = mu[j];
      for (std::int64_t k = 0; k < d; ++k) s += mix[j * d + k] * z[k];
      x[i * d + j] = s;
    }
  }
  return x;
}

double max_rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double scale = 0, m = 0;
  for (double v : b) scale = std::max(scale, std::abs(v));
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m / scale;
}

}  // namespace

TEST_CASE("covariance: many blocks == one pass == naive two-pass") {
  const std::int64_t n = 1003, d = 17;
  const std::vector<float> x = random_rows(n, d, 1, 50.0f);
  cov_stats one(d), many(d);
  accumulate_block_cpu(one, x.data(), n, d, d);
  for (std::int64_t t = 0; t < n;) {
    const std::int64_t b = std::min<std::int64_t>(n - t, 1 + (t * 7) % 97);  // awkward sizes
    accumulate_block_cpu(many, x.data() + t * d, b, d, d);
    t += b;
  }
  const cov_stats ref = two_pass_stats(x.data(), n, d, d);
  CHECK(one.count == n);
  CHECK(many.count == n);
  CHECK(max_rel_diff(many.mean, ref.mean) < 1e-12);
  CHECK(max_rel_diff(one.m2, ref.m2) < 1e-12);
  CHECK(max_rel_diff(many.m2, ref.m2) < 1e-12);
  // Merging two partial accumulators (as from two captures) is the same again.
  cov_stats a(d), b(d);
  accumulate_block_cpu(a, x.data(), 400, d, d);
  accumulate_block_cpu(b, x.data() + 400 * d, n - 400, d, d);
  a.merge(b);
  CHECK(max_rel_diff(a.m2, ref.m2) < 1e-12);
  // Uncentred second moment = M2 / n + mean mean^T.
  const std::vector<double> c0 = many.covariance(false);
  double direct = 0;
  for (std::int64_t i = 0; i < n; ++i) direct += double(x[i * d + 3]) * x[i * d + 5];
  CHECK(std::abs(c0[3 * d + 5] - direct / n) < 1e-9 * std::abs(direct / n) + 1e-9);
}

TEST_CASE("covariance: per-head and pooled layouts of [rows, n_kv, d]") {
  const std::int64_t rows = 211, n_kv = 3, d = 8;
  const std::vector<float> x = random_rows(rows * n_kv, d, 2, 3.0f);  // reinterpreted as rows
  std::vector<cov_stats> heads(n_kv, cov_stats(d)), pooled(1, cov_stats(d));
  accumulate_rows_cpu(heads, x.data(), rows, n_kv, d);
  accumulate_rows_cpu(pooled, x.data(), rows, n_kv, d);
  for (std::int64_t h = 0; h < n_kv; ++h) {
    const cov_stats ref = two_pass_stats(x.data() + h * d, rows, d, n_kv * d);
    CHECK(max_rel_diff(heads[h].m2, ref.m2) < 1e-12);
  }
  const cov_stats ref = two_pass_stats(x.data(), rows * n_kv, d, d);
  CHECK(pooled[0].count == rows * n_kv);
  CHECK(max_rel_diff(pooled[0].m2, ref.m2) < 1e-12);
}

TEST_CASE("eigensolve: known spectrum, descending, deterministic sign") {
  const std::int64_t d = 24;
  std::mt19937 rng(3);
  std::normal_distribution<double> g(0, 1);
  Eigen::MatrixXd q =
      Eigen::HouseholderQR<Eigen::MatrixXd>(Eigen::MatrixXd::NullaryExpr(d, d, [&]() {
        return g(rng);
      })).householderQ();
  Eigen::VectorXd lam(d);
  for (int i = 0; i < d; ++i) lam[i] = std::pow(0.7, i) * 10;
  const Eigen::MatrixXd c = q * lam.asDiagonal() * q.transpose();
  std::vector<double> a(static_cast<size_t>(d * d));
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < d; ++j) a[i * d + j] = c(i, j);
  const eig_result r = eigh_cpu(a.data(), d);
  for (int i = 0; i < d; ++i) CHECK(r.values[i] == doctest::Approx(lam[i]).epsilon(1e-10));
  for (int j = 0; j < d; ++j) {
    // Column j is +-q.col(j), with its largest-|.| entry positive.
    double dot = 0, best = 0;
    for (int i = 0; i < d; ++i) {
      dot += r.vectors[i * d + j] * q(i, j);
      if (std::abs(r.vectors[i * d + j]) > std::abs(best)) best = r.vectors[i * d + j];
    }
    CHECK(std::abs(std::abs(dot) - 1) < 1e-9);
    CHECK(best > 0);
  }
  // The sign convention makes the result independent of the input's orientation.
  std::vector<double> a2 = a;
  const eig_result r2 = eigh_batched({a2}, d, eig_device::cpu)[0];
  CHECK(max_rel_diff(r2.vectors, r.vectors) < 1e-12);
}

TEST_CASE("eigensolve: full-rank PCA reconstructs exactly") {
  const std::int64_t n = 300, d = 16;
  const std::vector<float> x = random_rows(n, d, 4, 5.0f);
  cov_stats s(d);
  accumulate_block_cpu(s, x.data(), n, d, d);
  const eig_result r = eigh_cpu(s.covariance(true).data(), d);
  double err = 0, scale = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    std::vector<double> z(d, 0.0);
    for (std::int64_t j = 0; j < d; ++j)
      for (std::int64_t k = 0; k < d; ++k)
        z[j] += r.vectors[k * d + j] * (x[i * d + k] - s.mean[k]);
    for (std::int64_t k = 0; k < d; ++k) {
      double y = s.mean[k];
      for (std::int64_t j = 0; j < d; ++j) y += r.vectors[k * d + j] * z[j];
      err = std::max(err, std::abs(y - x[i * d + k]));
      scale = std::max(scale, std::abs(double(x[i * d + k])));
    }
  }
  CHECK(err < 1e-10 * scale);
}

TEST_CASE("rank allocation: fixed, energy, budget exact and never worse than uniform") {
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> u(0.3, 0.95);
  std::vector<rank_block> blocks;
  const int d = 32;
  for (int b = 0; b < 12; ++b) {
    rank_block blk;
    const double decay = u(rng), scale = 1 + 10 * u(rng);
    for (int i = 0; i < d; ++i) blk.eigenvalues.push_back(scale * std::pow(decay, i));
    blocks.push_back(blk);
  }
  SUBCASE("fixed") {
    const rank_plan p = ranks_fixed(blocks, 8, 16);
    CHECK(p.bits_per_token == 12 * 8 * 16);
    CHECK_THROWS_WITH_AS(ranks_fixed(blocks, d, 16), doctest::Contains("[1, head_dim)"),
                         kvcal::error);
    CHECK_THROWS_AS(ranks_fixed(blocks, 0, 16), kvcal::error);
    CHECK_THROWS_WITH_AS(ranks_fixed(blocks, 4, 5), doctest::Contains("latent bits 5"),
                         kvcal::error);
  }
  SUBCASE("energy") {
    const rank_plan p = ranks_for_energy(blocks, 0.9, 16);
    for (size_t b = 0; b < blocks.size(); ++b) {
      CHECK(explained_energy(blocks[b].eigenvalues, p.ranks[b]) >= 0.9);
      if (p.ranks[b] > 1) CHECK(explained_energy(blocks[b].eigenvalues, p.ranks[b] - 1) < 0.9);
    }
    CHECK(ranks_for_energy(blocks, 1.0, 16).ranks[0] == d);
    CHECK_THROWS_WITH_AS(ranks_for_energy(blocks, 0.0, 16), doctest::Contains("(0, 1]"),
                         kvcal::error);
    CHECK_THROWS_AS(ranks_for_energy(blocks, 1.5, 16), kvcal::error);
  }
  SUBCASE("budget, every latent width") {
    for (int bits : {16, 8, 4}) {
      for (double bytes : {30.0, 100.5, 257.0, 333.25, 700.0}) {
        CAPTURE(bits);
        CAPTURE(bytes);
        const std::int64_t budget = static_cast<std::int64_t>(bytes * 8);
        const std::int64_t min_bits = plan_bits(blocks, std::vector<int>(12, 1), bits);
        if (min_bits > budget) {
          CHECK_THROWS_WITH_AS(ranks_for_budget(blocks, bytes, bits),
                               doctest::Contains("below the minimum"), kvcal::error);
          continue;
        }
        const rank_plan p = ranks_for_budget(blocks, bytes, bits);
        CHECK(p.bits_per_token <= budget);
        // Exact: no block could take one more component.
        bool all_full = true;
        for (int r : p.ranks) all_full = all_full && r == d;
        if (!all_full) CHECK(budget - p.bits_per_token < bits);
        CHECK(p.bits_per_token == plan_bits(blocks, p.ranks, bits));
        CHECK(p.uniform_rank >= 1);
        CHECK(p.discarded <= p.uniform_discarded + 1e-12);
        // Brute-force check of the accounting of uniform ranks.
        const std::int64_t per_rank = bits, extra = bits < 16 ? 32 : 0;
        CHECK(plan_bits(blocks, std::vector<int>(12, p.uniform_rank), bits) ==
              12 * (p.uniform_rank * per_rank + extra));
      }
    }
  }
  SUBCASE("layer granularity: blocks shared by several heads") {
    for (auto& b : blocks) b.heads = 4;
    const rank_plan p = ranks_for_budget(blocks, 500, 8);
    CHECK(p.bits_per_token <= 4000);
    CHECK(4000 - p.bits_per_token < 4 * 8);
    CHECK(p.discarded <= p.uniform_discarded + 1e-12);
  }
}
