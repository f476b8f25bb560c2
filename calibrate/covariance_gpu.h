// GPU covariance accumulation (calibrate/covariance.h has the maths and the CPU path).
//
// One accumulator holds fp64 statistics on the device for `n_slots` x `n_batch` blocks (n_batch =
// KV heads, or 1 when pooled). Each block of capture rows [rows, n_kv, d] is shifted by the
// running mean (the first block: by its own mean), reduced to per-chunk fp32 Gram matrices and
// fp64 column sums, and merged into the fp64 statistics with Chan's formula. Shifting before the
// fp32 products keeps large channel means from cancelling against small variances. Routes:
//   - fp16 input (add_*_half), d in {16, 32, 64, 128}: one fused tensor-core kernel
//     (cov_gpu_math::fp16x3 below), 2 bytes of HBM traffic per value; other d: converted to fp32.
//   - fp32 input: cov_gpu_math picks fp32 (default: cublasSgemmStridedBatched, plain fp32, no
//     TF32), tf32x3 or fp16x3.
//
//   kvcal::cov_accumulator_gpu acc(n_kv, d, /*pooled=*/false, /*max_rows=*/8192);
//   acc.add_host(x, rows);                // or add_device(d_x, rows) for data already on the GPU
//   acc.add_host_half(bits, rows);        // fp16 captures: IEEE half bits, no conversion
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

// How fp32 input is reduced (fp16 input always takes fp16x3 where d allows it).
//   fp32:   cublasSgemmStridedBatched in plain fp32 (CUDA cores).
//   tf32x3: y = hi + lo split, one TF32 tensor-core GEMM [hi]^T [hi | lo] and
//           G = hi^T hi + hi^T lo + lo^T hi (~fp32 accuracy).
//   fp16x3: fused kernel: y = (x - shift) * 2^e per column and chunk (e puts the chunk's largest
//           |y| just under 2^10), y = hi + lo in fp16 (|y - hi - lo| <= 2^-24 |y|), and
//           G = hi^T hi + hi^T lo + lo^T hi on fp16 tensor cores: fp16 x fp16 products are exact
//           in fp32 and are accumulated in fp32, flushed to a second fp32 sum every 64 rows
//           (~fp32 accuracy; lo^T lo, <= 2^-24 relative, is dropped). Only the upper triangle of
//           tiles is computed. d must be 16, 32, 64 or 128 (else: fp32).
// Values appended only.
enum class cov_gpu_math { fp32, tf32x3, fp16x3 };

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
  // The same for fp16 data (IEEE binary16 bits, as captures store them).
  void add_host_half(const std::uint16_t* x, std::int64_t rows, std::int64_t slot = 0);
  void add_device_half(const std::uint16_t* d_x, std::int64_t rows, std::int64_t slot = 0);
  // fp16x3 kernel: vectors per CTA (rounded up to 64, at least 256, at most max_rows x heads);
  // 0 (default): about two CTAs per SM. For benchmarks.
  void set_split_chunk(std::int64_t vectors);
  // Whether fp16 input of this head_dim takes the fused tensor-core kernel.
  static bool half_kernel_supports(std::int64_t d);
  void synchronize();
  std::vector<cov_stats> download(std::int64_t slot = 0);

  struct impl;

 private:
  std::unique_ptr<impl> p_;
};

}  // namespace kvcal
