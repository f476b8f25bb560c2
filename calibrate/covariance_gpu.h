// GPU covariance accumulation (calibrate/covariance.h has the maths and the CPU path).
//
// One accumulator holds fp64 statistics on the device for `n_slots` x `n_batch` blocks (n_batch =
// KV heads, or 1 when pooled). Each block of capture rows [rows, n_kv, d] (fp32) is shifted by the
// running mean (the first block: by its own mean) into an fp32 copy with fp64 column sums, reduced
// by one cublasSgemmStridedBatched over (head, 1024-row chunk) — plain fp32, no TF32 — and merged
// into the fp64 statistics with Chan's formula (one kernel). Shifting before the fp32 product keeps
// large channel means from cancelling against small variances. cov_gpu_math::tf32x3 uses TF32
// tensor cores with a hi/lo split instead (same accuracy class; not faster at these shapes).
//
//   kvcal::cov_accumulator_gpu acc(n_kv, d, /*pooled=*/false, /*max_rows=*/8192);
//   acc.add_host(x, rows);                // or add_device(d_x, rows) for data already on the GPU
//   std::vector<kvcal::cov_stats> s = acc.download();
// `n_slots` independent statistics (e.g. every layer x target of a fit) share one staging area:
// add_host(x, rows, slot) / download(slot).
//
// Only usable when cuda_device_count() > 0; constructing it otherwise throws kvcal::error.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "calibrate/covariance.h"

namespace kvcal {

// fp32: cublasSgemmStridedBatched in plain fp32 (CUDA cores). tf32x3: y = hi + lo split, one TF32
// tensor-core GEMM [hi]^T [hi | lo] and G = hi^T hi + hi^T lo + lo^T hi (~fp32 accuracy).
enum class cov_gpu_math { fp32, tf32x3 };

// True when this build has the CUDA path compiled in.
bool covariance_gpu_compiled();

class cov_accumulator_gpu {
 public:
  // pooled: one statistic over all heads' vectors; else one per KV head.
  cov_accumulator_gpu(std::int64_t n_kv, std::int64_t d, bool pooled, std::int64_t max_rows,
                      std::int64_t n_slots = 1, cov_gpu_math math = cov_gpu_math::fp32);
  ~cov_accumulator_gpu();
  cov_accumulator_gpu(const cov_accumulator_gpu&) = delete;
  cov_accumulator_gpu& operator=(const cov_accumulator_gpu&) = delete;

  // x: host [rows, n_kv, d], rows <= max_rows.
  void add_host(const float* x, std::int64_t rows, std::int64_t slot = 0);
  // d_x: device [rows, n_kv, d]; asynchronous on the accumulator's stream.
  void add_device(const float* d_x, std::int64_t rows, std::int64_t slot = 0);
  void synchronize();
  std::vector<cov_stats> download(std::int64_t slot = 0);

  struct impl;

 private:
  std::unique_ptr<impl> p_;
};

}  // namespace kvcal
