// fit-pca on the GPU vs the CPU: covariance accumulation and batched eigensolve (label gpu).
#include <cuda_runtime.h>
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "calibrate/covariance.h"
#include "calibrate/covariance_gpu.h"
#include "calibrate/eigensolve.h"
#include "kernels/common/cuda_device.h"
#include "kernels/common/half.h"

using namespace kvcal;

namespace {

std::vector<float> random_rows(std::int64_t n, std::int64_t d, unsigned seed, float mean_scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0, 1);
  std::vector<float> mix(static_cast<size_t>(d * d)), mu(static_cast<size_t>(d));
  for (auto& v : mix) v = g(rng) / std::sqrt(static_cast<float>(d));
  for (auto& v : mu) v = mean_scale * g(rng);
  std::vector<float> x(static_cast<size_t>(n * d)), z(static_cast<size_t>(d));
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < d; ++j) z[j] = g(rng) * std::pow(0.93f, float(j)) * 4;
    for (std::int64_t j = 0; j < d; ++j) {
      float s = mu[j];
      for (std::int64_t k = 0; k < d; ++k) s += mix[j * d + k] * z[k];
      x[i * d + j] = s;
    }
  }
  return x;
}

// Largest principal angle (radians) between the spans of the first r columns of a and b.
double principal_angle(const std::vector<double>& a, const std::vector<double>& b, int d, int r) {
  Eigen::MatrixXd ua(d, r), ub(d, r);
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < r; ++j) {
      ua(i, j) = a[i * d + j];
      ub(i, j) = b[i * d + j];
    }
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(ua.transpose() * ub);
  const double smin = std::min(1.0, svd.singularValues().minCoeff());
  return std::acos(smin);
}

// Max |gpu - cpu| of the means relative to max |mean|, of M2 relative to max |M2|, and the worst
// relative error of a diagonal entry (each channel's own variance, the strict one).
struct stat_errors {
  double mean = 0, m2 = 0, diag = 0;
};

stat_errors compare(const cov_stats& gpu, const cov_stats& cpu) {
  const std::int64_t d = cpu.d;
  double em = 0, ec = 0, sm = 0, sc = 0, ed = 0;
  for (std::int64_t i = 0; i < d; ++i) {
    em = std::max(em, std::abs(gpu.mean[i] - cpu.mean[i]));
    sm = std::max(sm, std::abs(cpu.mean[i]));
    ed = std::max(ed, std::abs(gpu.m2[i * d + i] - cpu.m2[i * d + i]) / cpu.m2[i * d + i]);
  }
  for (std::int64_t i = 0; i < d * d; ++i) {
    ec = std::max(ec, std::abs(gpu.m2[i] - cpu.m2[i]));
    sc = std::max(sc, std::abs(cpu.m2[i]));
  }
  return {em / std::max(sm, 1e-300), ec / sc, ed};
}

}  // namespace

TEST_CASE("GPU covariance == CPU covariance (per head and pooled, awkward block sizes)") {
  if (cuda_device_count() == 0) {
    MESSAGE("no CUDA device: skipped");
    return;
  }
  // d 97: fp16x3 has no kernel for it and takes the fp32 route; d 64: every route is its own.
  for (const std::int64_t d : {97, 64}) {
    const std::int64_t rows = 5003, n_kv = 3;
    const std::vector<float> x = random_rows(rows * n_kv, d, 11, 20.0f);
    for (int variant = 0; variant < 6; ++variant) {
      const bool pooled = variant % 2 == 1;
      const cov_gpu_math math = variant < 2   ? cov_gpu_math::fp32
                                : variant < 4 ? cov_gpu_math::tf32x3
                                              : cov_gpu_math::fp16x3;
      CAPTURE(d);
      CAPTURE(pooled);
      CAPTURE(variant);
      cov_accumulator_gpu acc(n_kv, d, pooled, 2500, 1, math);
      std::vector<cov_stats> cpu(pooled ? 1 : n_kv, cov_stats(d));
      for (std::int64_t t = 0; t < rows;) {
        const std::int64_t b = std::min<std::int64_t>(rows - t, 17 + (t * 13) % 2400);
        acc.add_host(x.data() + t * n_kv * d, b);
        accumulate_rows_cpu(cpu, x.data() + t * n_kv * d, b, n_kv, d);
        t += b;
      }
      const std::vector<cov_stats> gpu = acc.download();
      REQUIRE(gpu.size() == cpu.size());
      for (size_t h = 0; h < gpu.size(); ++h) {
        CHECK(gpu[h].count == cpu[h].count);
        double em = 0, ec = 0, sm = 0, sc = 0;
        for (std::int64_t i = 0; i < d; ++i) {
          em = std::max(em, std::abs(gpu[h].mean[i] - cpu[h].mean[i]));
          sm = std::max(sm, std::abs(cpu[h].mean[i]));
        }
        for (std::int64_t i = 0; i < d * d; ++i) {
          ec = std::max(ec, std::abs(gpu[h].m2[i] - cpu[h].m2[i]));
          sc = std::max(sc, std::abs(cpu[h].m2[i]));
        }
        CHECK(em / sm < 1e-10);
        CHECK(ec / sc < 1e-5);
      }
    }
  }
}

// fp16 input (what captures store): the GPU reduces the fp16 values themselves; the reference is
// the CPU's fp64 accumulation of the same values (fp16 -> float is exact). Bound: 1e-5 relative,
// the same as the fp32 route (fp16 x fp16 products are exact in fp32; y = hi + lo to 2^-24).
// Three data sets: a large mean (cancellation), tiny values (the per-chunk scale, subnormal
// fp16 inputs) and one block 40x larger than the rest (a scale that changes between chunks).
TEST_CASE("GPU covariance of fp16 input == CPU fp64 on the same fp16 values") {
  if (cuda_device_count() == 0) {
    MESSAGE("no CUDA device: skipped");
    return;
  }
  for (const std::int64_t d : {128, 64, 16, 97}) {
    const std::int64_t rows = 4099, n_kv = 2;
    for (int data = 0; data < 3; ++data) {
      std::vector<float> x =
          random_rows(rows * n_kv, d, 21 + static_cast<unsigned>(data), data == 0 ? 20.0f : 0.5f);
      if (data == 1)
        for (auto& v : x) v *= 1e-3f;
      if (data == 2)
        for (std::int64_t i = 1000 * n_kv * d; i < 1300 * n_kv * d; ++i) x[i] *= 40.0f;
      std::vector<std::uint16_t> h(x.size());
      for (size_t i = 0; i < x.size(); ++i) {
        h[i] = float_to_fp16(x[i]);
        x[i] = fp16_to_float(h[i]);  // the reference sees exactly the fp16 values
      }
      for (const bool pooled : {false, true}) {
        CAPTURE(d);
        CAPTURE(data);
        CAPTURE(pooled);
        cov_accumulator_gpu acc(n_kv, d, pooled, 2100, 2);
        std::vector<cov_stats> cpu(pooled ? 1 : n_kv, cov_stats(d));
        for (std::int64_t t = 0; t < rows;) {
          const std::int64_t b = std::min<std::int64_t>(rows - t, 33 + (t * 7) % 2000);
          acc.add_host_half(h.data() + t * n_kv * d, b, 1);
          accumulate_rows_cpu(cpu, x.data() + t * n_kv * d, b, n_kv, d);
          t += b;
        }
        const std::vector<cov_stats> gpu = acc.download(1);
        REQUIRE(gpu.size() == cpu.size());
        CHECK(acc.download(0)[0].count == 0);  // the other slot is untouched
        for (size_t k = 0; k < gpu.size(); ++k) {
          CHECK(gpu[k].count == cpu[k].count);
          const stat_errors e = compare(gpu[k], cpu[k]);
          CHECK(e.mean < 1e-10);
          CHECK(e.m2 < 1e-5);
          CHECK(e.diag < 1e-5);
        }
      }
    }
  }
}

// The fp16 kernel on data already in device memory, one large block (many CTAs per head), vs the
// same values reduced on the CPU; also checks add_device_half leaves the caller's data intact.
TEST_CASE("GPU covariance: add_device_half, one 20000-row block, d 128") {
  if (cuda_device_count() == 0) {
    MESSAGE("no CUDA device: skipped");
    return;
  }
  const std::int64_t rows = 20000, n_kv = 4, d = 128;
  std::vector<float> x = random_rows(rows * n_kv, d, 5, 3.0f);
  std::vector<std::uint16_t> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    h[i] = float_to_fp16(x[i]);
    x[i] = fp16_to_float(h[i]);
  }
  std::uint16_t* dx = nullptr;
  REQUIRE(cudaMalloc(&dx, h.size() * 2) == cudaSuccess);
  REQUIRE(cudaMemcpy(dx, h.data(), h.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
  std::vector<cov_stats> cpu(n_kv, cov_stats(d));
  accumulate_rows_cpu(cpu, x.data(), rows, n_kv, d);
  accumulate_rows_cpu(cpu, x.data(), rows, n_kv, d);
  // Chunks: the default (~2 CTAs per SM), 1000 -> 1024 and 5000 -> 5056 rows per CTA.
  for (const std::int64_t chunk : {0, 1000, 5000}) {
    CAPTURE(chunk);
    cov_accumulator_gpu acc(n_kv, d, false, rows);
    acc.set_split_chunk(chunk);
    acc.add_device_half(dx, rows);
    acc.add_device_half(dx, rows);  // the second block shifts by the running mean
    const std::vector<cov_stats> gpu = acc.download();
    for (std::int64_t k = 0; k < n_kv; ++k) {
      const stat_errors e = compare(gpu[k], cpu[k]);
      CHECK(e.mean < 1e-10);
      CHECK(e.m2 < 1e-5);
      CHECK(e.diag < 1e-5);
    }
  }
  std::vector<std::uint16_t> back(h.size());
  REQUIRE(cudaMemcpy(back.data(), dx, h.size() * 2, cudaMemcpyDeviceToHost) == cudaSuccess);
  cudaFree(dx);
  CHECK(back == h);
}

TEST_CASE("GPU batched eigensolve == CPU (eigenvalues rel <= 1e-5, principal angles <= 1e-3)") {
  if (cuda_device_count() == 0) {
    MESSAGE("no CUDA device: skipped");
    return;
  }
  for (std::int64_t d : {16, 64, 128}) {
    CAPTURE(d);
    std::vector<std::vector<double>> mats;
    for (int b = 0; b < 24; ++b) {
      const std::vector<float> x = random_rows(2000, d, 100 + b, 1.0f);
      cov_stats s(d);
      accumulate_block_cpu(s, x.data(), 2000, d, d);
      mats.push_back(s.covariance(true));
    }
    std::string used;
    const auto gpu = eigh_batched(mats, d, eig_device::cuda, &used);
    MESSAGE("solver: ", used);
    const auto cpu = eigh_batched(mats, d, eig_device::cpu);
    for (size_t b = 0; b < mats.size(); ++b) {
      double rel = 0;
      for (std::int64_t j = 0; j < d; ++j)
        rel = std::max(rel, std::abs(gpu[b].values[j] - cpu[b].values[j]) / cpu[b].values[0]);
      CHECK(rel <= 1e-5);
      for (int r : {1, 4, static_cast<int>(d / 4), static_cast<int>(d / 2)}) {
        // Only where the eigengap makes the subspace well defined.
        if (cpu[b].values[r - 1] - cpu[b].values[r] < 1e-3 * cpu[b].values[0]) continue;
        CHECK(principal_angle(gpu[b].vectors, cpu[b].vectors, static_cast<int>(d), r) <= 1e-3);
      }
    }
  }
}

// fit-pca end to end on the GPU vs the CPU (needs HDF5: not in scripts/pca-gpu-quick.sh builds).
#ifndef KVCAL_PCA_QUICK
#include <nlohmann/json.hpp>

#include "calibrate/h5_array.h"
#include "calibrate/pca_fit.h"
#include "calibrate/pca_format.h"
#include "tests/test_util.h"

TEST_CASE("fit-pca --device cuda == --device cpu on a synthetic capture") {
  if (cuda_device_count() == 0) {
    MESSAGE("no CUDA device: skipped");
    return;
  }
  kvcal::test::scratch_dir dir;
  const std::int64_t n_layers = 3, n_kv = 2, d = 64, n = 3000;
  {
    h5_file f = h5_file::create(dir.file("cap.h5"));
    f.set_attr("format", std::string("kvcal.capture"));
    f.set_attr("version", std::int64_t{1});
    f.set_attr("model", std::string(R"({"model_type":"llama","n_layers":3})"));
    f.set_attr("n_layers", n_layers);
    f.set_attr("n_kv_heads", n_kv);
    f.set_attr("n_heads", 2 * n_kv);
    f.set_attr("head_dim", d);
    f.set_attr("n_tokens", n);
    f.set_attr("dtype", std::string("float16"));
    unsigned seed = 1;
    for (std::int64_t l = 0; l < n_layers; ++l)
      for (const char* t : {"k", "v"}) {
        const std::string p = "/layers/" + std::to_string(l) + "/" + t;
        h5_create_dataset(f, p, h5_dtype::f16, {n, n_kv, d}, 512);
        const std::vector<float> x = random_rows(n * n_kv, d, ++seed, 4.0f);
        h5_write_rows(f, p, 0, n, x.data());
      }
  }
  // 0: CPU; 1: GPU, fp16 as stored to the fused kernel; 2: GPU, fp32 on the host + SGEMM.
  pca_file out[3];
  for (int g = 0; g < 3; ++g) {
    pca_fit_params p;
    p.captures = {dir.file("cap.h5")};
    p.out = dir.file("fit" + std::to_string(g) + ".h5");
    p.device = g ? "cuda" : "cpu";
    p.gpu_fp16_kernel = g == 1;
    p.block_rows = 700;
    p.bytes_per_token = 300;
    const pca_fit_result r = run_pca_fit(p);
    CHECK(r.device_used == p.device);
    out[g] = read_pca_file(p.out);
  }
  for (int gi = 1; gi < 3; ++gi) {
    CAPTURE(gi);
    REQUIRE(out[0].blocks.size() == out[gi].blocks.size());
    for (size_t b = 0; b < out[0].blocks.size(); ++b) {
      const pca_block &c = out[0].blocks[b], &g = out[gi].blocks[b];
      CHECK(c.count == g.count);
      double rel = 0;
      for (std::int64_t j = 0; j < d; ++j)
        rel = std::max(rel, std::abs(c.eigenvalues[j] - g.eigenvalues[j]) / c.eigenvalues[0]);
      CHECK(rel <= 1e-5);
      for (int r : {1, 8, 16}) {
        if (c.eigenvalues[r - 1] - c.eigenvalues[r] < 1e-3 * c.eigenvalues[0]) continue;
        CHECK(principal_angle(g.basis, c.basis, static_cast<int>(d), r) <= 1e-3);
      }
      // Ranks may differ by one where eigenvalues of two blocks tie to rounding (greedy order).
      CHECK(std::abs(c.rank - g.rank) <= 1);
    }
  }
}
#endif
