// bench_pca: fit-pca's GPU pieces on the shape of issue #6 (28 layers x 4 KV heads x K,V = 224
// blocks of head_dim 128), against torch in bench/torch_pca_baseline.py (same shapes).
//
//   bench_pca [--blocks 224] [--d 128] [--layers 28] [--kv 4] [--rows 32768] [--reps 20]
//             [--cpu-eig] [--no-eig] [--append docs/BENCHMARKS.md]
// Prints a markdown table:
//   - batched eigensolve of `blocks` d x d covariances: cusolverDnXsyevBatched fp64 and fp32
//     (the path fit-pca uses is fp64), the syevd loop fallback, optionally Eigen on the CPU;
//     accuracy of each vs Eigen (max eigenvalue rel. error, max principal angle of the top d/4)
//   - covariance accumulation from device memory: tokens/s for all blocks (every token updates
//     layers x 2 targets x kv statistics), each route side by side: fp16 input (the fused
//     tensor-core kernel, what fit-pca uses on fp16 captures) and fp32 input (fp32 SGEMM, the
//     default; 3xTF32; fp16x3), each with its M2 error vs the CPU in fp64 on the same values.
//     Compare with bench/torch_pca_baseline.py --rows <same> (torch fp32 bmm on fp32 data and
//     fp16-input bmm), run in the same session.
#include <cuda_runtime.h>

#include <Eigen/Dense>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "calibrate/covariance.h"
#include "calibrate/covariance_gpu.h"
#include "calibrate/eigensolve.h"
#include "kernels/common/cuda_check.h"
#include "kernels/common/cuda_device.h"
#include "kernels/common/error.h"
#include "kernels/common/half.h"

using namespace kvcal;

namespace {

struct args {
  int blocks = 224, d = 128, layers = 28, kv = 4, reps = 20;
  std::int64_t rows = 32768;
  bool cpu_eig = false, eig = true;
  std::string append;
};

args parse(int argc, char** argv) {
  args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", k.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (k == "--blocks")
      a.blocks = std::stoi(next());
    else if (k == "--d")
      a.d = std::stoi(next());
    else if (k == "--layers")
      a.layers = std::stoi(next());
    else if (k == "--kv")
      a.kv = std::stoi(next());
    else if (k == "--rows")
      a.rows = std::stoll(next());
    else if (k == "--reps")
      a.reps = std::stoi(next());
    else if (k == "--cpu-eig")
      a.cpu_eig = true;
    else if (k == "--no-eig")
      a.eig = false;
    else if (k == "--append")
      a.append = next();
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      std::exit(2);
    }
  }
  return a;
}

// Covariance-like matrices with a decaying spectrum (like K/V heads), from random rotations.
std::vector<std::vector<double>> make_covs(int n, int d, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> g(0, 1);
  std::vector<std::vector<double>> out;
  for (int b = 0; b < n; ++b) {
    const Eigen::MatrixXd q =
        Eigen::HouseholderQR<Eigen::MatrixXd>(Eigen::MatrixXd::NullaryExpr(d, d, [&]() {
          return g(rng);
        })).householderQ();
    Eigen::VectorXd lam(d);
    const double decay = 0.85 + 0.1 * (b % 7) / 7.0;
    for (int i = 0; i < d; ++i) lam[i] = 10 * std::pow(decay, i) + 1e-3;
    const Eigen::MatrixXd c = q * lam.asDiagonal() * q.transpose();
    std::vector<double> m(static_cast<size_t>(d) * d);
    for (int i = 0; i < d; ++i)
      for (int j = 0; j < d; ++j) m[static_cast<size_t>(i) * d + j] = 0.5 * (c(i, j) + c(j, i));
    out.push_back(std::move(m));
  }
  return out;
}

double principal_angle(const std::vector<double>& a, const std::vector<double>& b, int d, int r) {
  Eigen::MatrixXd ua(d, r), ub(d, r);
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < r; ++j) {
      ua(i, j) = a[static_cast<size_t>(i) * d + j];
      ub(i, j) = b[static_cast<size_t>(i) * d + j];
    }
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(ua.transpose() * ub);
  return std::acos(std::min(1.0, svd.singularValues().minCoeff()));
}

struct row {
  std::string what, time, rate, accuracy;
};

// Times gpu_eigensolver::run on the batch (input re-uploaded device-to-device each rep, not timed
// separately: a D2D copy of 224 x 128 x 128 doubles is ~10 us). Returns ms per batch.
double time_eig(const std::vector<std::vector<double>>& covs, int d, bool fp64, bool syevd_loop,
                int reps, std::vector<eig_result>* result, std::string* method) {
  const size_t dd = static_cast<size_t>(d) * d, n = covs.size();
  const size_t el = fp64 ? 8 : 4;
  std::vector<char> host(n * dd * el);
  for (size_t b = 0; b < n; ++b)
    for (size_t i = 0; i < dd; ++i) {
      if (fp64)
        reinterpret_cast<double*>(host.data())[b * dd + i] = covs[b][i];
      else
        reinterpret_cast<float*>(host.data())[b * dd + i] = static_cast<float>(covs[b][i]);
    }
  void *src = nullptr, *a = nullptr, *w = nullptr;
  KVCAL_CUDA_OK(cudaMalloc(&src, host.size()));
  KVCAL_CUDA_OK(cudaMalloc(&a, host.size()));
  KVCAL_CUDA_OK(cudaMalloc(&w, n * static_cast<size_t>(d) * el));
  KVCAL_CUDA_OK(cudaMemcpy(src, host.data(), host.size(), cudaMemcpyHostToDevice));
  // syevd loop: d > 32 makes the constructor pick it when XsyevBatched is refused; force it by
  // asking for the syevj route with d > 32.
  gpu_eigensolver solver(static_cast<std::int64_t>(n), d, fp64, syevd_loop);
  *method = solver.method();
  KVCAL_CUDA_OK(cudaMemcpy(a, src, host.size(), cudaMemcpyDeviceToDevice));
  solver.run(a, w);  // warm-up
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    KVCAL_CUDA_OK(cudaMemcpy(a, src, host.size(), cudaMemcpyDeviceToDevice));
    KVCAL_CUDA_OK(cudaDeviceSynchronize());
    const auto t0 = std::chrono::steady_clock::now();
    solver.run(a, w);  // synchronous (reads back info)
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, ms);
  }
  std::vector<char> vec(host.size()), val(n * static_cast<size_t>(d) * el);
  KVCAL_CUDA_OK(cudaMemcpy(vec.data(), a, vec.size(), cudaMemcpyDeviceToHost));
  KVCAL_CUDA_OK(cudaMemcpy(val.data(), w, val.size(), cudaMemcpyDeviceToHost));
  result->assign(n, {});
  for (size_t b = 0; b < n; ++b) {
    eig_result& e = (*result)[b];
    e.values.resize(static_cast<size_t>(d));
    e.vectors.resize(dd);
    for (int j = 0; j < d; ++j)
      e.values[j] = fp64 ? reinterpret_cast<double*>(val.data())[b * d + j]
                         : reinterpret_cast<float*>(val.data())[b * d + j];
    for (int i = 0; i < d; ++i)
      for (int j = 0; j < d; ++j) {
        const size_t src_i = b * dd + static_cast<size_t>(j) * d + i;  // column-major
        e.vectors[static_cast<size_t>(i) * d + j] =
            fp64 ? reinterpret_cast<double*>(vec.data())[src_i]
                 : reinterpret_cast<float*>(vec.data())[src_i];
      }
    canonicalize_eig(e, d);
  }
  cudaFree(src);
  cudaFree(a);
  cudaFree(w);
  return best;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string accuracy(const std::vector<eig_result>& got, const std::vector<eig_result>& ref,
                     int d) {
  double rel = 0, ang = 0;
  for (size_t b = 0; b < got.size(); ++b) {
    for (int j = 0; j < d; ++j)
      rel = std::max(rel, std::abs(got[b].values[j] - ref[b].values[j]) / ref[b].values[j]);
    ang = std::max(ang, principal_angle(got[b].vectors, ref[b].vectors, d, std::max(1, d / 4)));
  }
  return "eig rel " + fmt("%.1e", rel) + ", angle(top " + std::to_string(std::max(1, d / 4)) +
         ") " + fmt("%.1e", ang) + " rad";
}

// One covariance route timed over `reps` passes of every slot (after one warm-up pass), with the
// error of slot 0 against the CPU's fp64 accumulation of the same values (`ref`).
struct cov_case {
  std::string name;
  cov_gpu_math math;
  const void* dx;  // device [rows, kv, d], float or fp16 bits
  bool half;
  std::int64_t split_chunk = 0;  // fp16x3 rows per CTA; 0: the accumulator's choice
};

row time_cov(const args& a, const cov_case& c, const std::vector<cov_stats>& ref) {
  const std::int64_t slots = 2LL * a.layers;  // K and V of every layer
  cov_accumulator_gpu acc(a.kv, a.d, false, a.rows, slots, c.math);
  acc.set_split_chunk(c.split_chunk);
  auto pass = [&] {
    for (std::int64_t s = 0; s < slots; ++s) {
      if (c.half)
        acc.add_device_half(static_cast<const std::uint16_t*>(c.dx), a.rows, s);
      else
        acc.add_device(static_cast<const float*>(c.dx), a.rows, s);
    }
  };
  pass();  // warm-up (and the first block's mean pass)
  acc.synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < a.reps; ++r) pass();
  acc.synchronize();
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double tok_s = static_cast<double>(a.rows) * a.reps / sec;
  row out{"covariance " + std::to_string(slots * a.kv) + " blocks (" + std::to_string(a.layers) +
              " layers x K,V x " + std::to_string(a.kv) + " heads), " + std::to_string(a.rows) +
              "-token blocks, " + c.name,
          fmt("%.3f ms/block", sec * 1e3 / a.reps), fmt("%.2f M tok/s", tok_s / 1e6), ""};
  const auto gpu = acc.download(0);
  double err = 0, scale = 0;
  for (int h = 0; h < a.kv; ++h)
    for (size_t i = 0; i < ref[h].m2.size(); ++i) {
      err = std::max(err, std::abs(gpu[h].m2[i] - ref[h].m2[i]));
      scale = std::max(scale, std::abs(ref[h].m2[i]));
    }
  out.accuracy = "M2 max rel err vs CPU fp64 (same values) " + fmt("%.1e", err / scale);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const args a = parse(argc, argv);
  if (cuda_device_count() == 0) {
    std::fprintf(stderr, "bench_pca: no CUDA device (%s)\n", cuda_device_summary().c_str());
    return 1;
  }
  cudaDeviceProp prop{};
  std::vector<row> rows;
  try {
    KVCAL_CUDA_OK(cudaGetDeviceProperties(&prop, 0));
    // ---- Eigensolve ----
    if (a.eig) {
      const auto covs = make_covs(a.blocks, a.d, 1);
      const auto t0 = std::chrono::steady_clock::now();
      // Reference for accuracy (timed only with --cpu-eig).
      const std::vector<eig_result> ref = eigh_batched(covs, a.d, eig_device::cpu);
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (a.cpu_eig)
        rows.push_back({"eigensolve " + std::to_string(a.blocks) + " x " + std::to_string(a.d) +
                            "^2, Eigen fp64 (CPU, 1 thread)",
                        fmt("%.1f ms", ms), "", "reference"});
      for (bool fp64 : {true, false}) {
        std::vector<eig_result> got;
        std::string method;
        const double t = time_eig(covs, a.d, fp64, false, a.reps, &got, &method);
        rows.push_back({"eigensolve " + std::to_string(a.blocks) + " x " + std::to_string(a.d) +
                            "^2, " + method,
                        fmt("%.2f ms", t), "", accuracy(got, ref, a.d)});
      }
      std::vector<eig_result> got;
      std::string method;
      const double t = time_eig(covs, a.d, true, true, std::min(a.reps, 3), &got, &method);
      rows.push_back(
          {"eigensolve " + std::to_string(a.blocks) + " x " + std::to_string(a.d) + "^2, " + method,
           fmt("%.2f ms", t), "", accuracy(got, ref, a.d)});
    }

    // ---- Covariance accumulation from device memory ----
    // 3 + N(0, 1) (a mean larger than the spread, as in K channels); the fp16 copy holds the
    // same values rounded to fp16, and each route is checked against the CPU on its own input.
    std::vector<float> host(static_cast<size_t>(a.rows) * a.kv * a.d);
    std::mt19937 rng(2);
    std::normal_distribution<float> g(0, 1);
    for (auto& v : host) v = 3.0f + g(rng);
    std::vector<std::uint16_t> host_h(host.size());
    std::vector<float> host_hf(host.size());
    for (size_t i = 0; i < host.size(); ++i) {
      host_h[i] = float_to_fp16(host[i]);
      host_hf[i] = fp16_to_float(host_h[i]);
    }
    float* dx = nullptr;
    std::uint16_t* dh = nullptr;
    KVCAL_CUDA_OK(cudaMalloc(&dx, host.size() * sizeof(float)));
    KVCAL_CUDA_OK(cudaMalloc(&dh, host_h.size() * sizeof(std::uint16_t)));
    KVCAL_CUDA_OK(cudaMemcpy(dx, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
    KVCAL_CUDA_OK(cudaMemcpy(dh, host_h.data(), host_h.size() * sizeof(std::uint16_t),
                             cudaMemcpyHostToDevice));
    // Slot 0 sees reps + 1 copies of the same rows: the mean is that of one copy and M2 is
    // reps + 1 times its M2 (Chan's merge of identical blocks), so one CPU pass is enough.
    std::vector<cov_stats> ref32(static_cast<size_t>(a.kv), cov_stats(a.d)), ref16 = ref32;
    accumulate_rows_cpu(ref32, host.data(), a.rows, a.kv, a.d);
    accumulate_rows_cpu(ref16, host_hf.data(), a.rows, a.kv, a.d);
    for (auto* ref : {&ref32, &ref16})
      for (cov_stats& st : *ref) {
        st.count *= a.reps + 1;
        for (double& v : st.m2) v *= a.reps + 1;
      }
    const bool fused = cov_accumulator_gpu::half_kernel_supports(a.d);
    const std::vector<cov_case> cases = {
        {fused ? "fp16 input, fused fp16x3 tensor-core kernel + fp64 merge"
               : "fp16 input (no fused kernel for this d: converted, fp32 SGEMM)",
         cov_gpu_math::fp32, dh, true},
        {"fp16 input, fused kernel, 1024-row chunks", cov_gpu_math::fp32, dh, true, 1024},
        {"fp16 input, fused kernel, 4096-row chunks", cov_gpu_math::fp32, dh, true, 4096},
        {"fp32 input, fp32 SGEMM + fp64 merge (default for fp32)", cov_gpu_math::fp32, dx, false},
        {"fp32 input, 3xTF32 GEMM + fp64 merge", cov_gpu_math::tf32x3, dx, false},
        {"fp32 input, fused fp16x3 kernel + fp64 merge", cov_gpu_math::fp16x3, dx, false},
    };
    for (const cov_case& c : cases) {
      if (c.split_chunk > 0 && !fused) continue;
      rows.push_back(time_cov(a, c, c.half ? ref16 : ref32));
    }
    cudaFree(dx);
    cudaFree(dh);
  } catch (const kvcal::error& e) {
    std::fprintf(stderr, "bench_pca: %s\n", e.what());
    return 1;
  }

  std::ostringstream t;
  t << "\n### bench_pca (" << prop.name
    << ")\n\n| what | time | rate | accuracy |\n|---|---|---|---|\n";
  for (const auto& r : rows)
    t << "| " << r.what << " | " << r.time << " | " << r.rate << " | " << r.accuracy << " |\n";
  t << "\nGoals (issue #6): eigensolve <= 10 ms (torch.linalg.eigh 397 ms); covariance >= 2x torch "
       "fp32 bmm. Run bench/torch_pca_baseline.py --rows "
    << a.rows << " in the same session.\n";
  std::fputs(t.str().c_str(), stdout);
  if (!a.append.empty()) {
    std::ofstream f(a.append, std::ios::app);
    f << t.str();
  }
  return 0;
}
