// GPU covariance accumulation (calibrate/covariance.h has the maths and the CPU path).
//
// One accumulator holds `n_batch` fp64 statistics on the device. Each block of capture rows
// [rows, n_kv, d] (fp32) is reduced per batch entry as: column means (fp64 atomics) -> centred copy
// (fp32) -> X^T X by cublasSgemmStridedBatched (fp32, batch = KV heads) -> Chan merge into the fp64
// statistics (one kernel). Centring each block by its own mean before the fp32 GEMM keeps the
// products small, so the fp32 stage loses no more than ordinary fp32 rounding.
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

// True when this build has the CUDA path compiled in.
bool covariance_gpu_compiled();

class cov_accumulator_gpu {
 public:
  // pooled: one statistic over all heads' vectors; else one per KV head.
  cov_accumulator_gpu(std::int64_t n_kv, std::int64_t d, bool pooled, std::int64_t max_rows,
                      std::int64_t n_slots = 1);
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
