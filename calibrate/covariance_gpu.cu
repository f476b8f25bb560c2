// GPU covariance accumulation: see calibrate/covariance_gpu.h.
//
// Per block of rows and per batch entry b (a KV head, or the whole layer when pooled):
//   1. shift c_b: the running mean of the statistic (the block's own mean for the first block,
//      one extra column-sum pass), so the fp32 values below are small;
//   2. shift_kernel: y = x - c_b in fp32 into a padded [n_batch, n_chunks * chunk, d] buffer
//      (pad rows 0) and s_b = sum of y in fp64;
//   3. one cublasSgemmStridedBatched over (b, chunk): G_bc = Y_bc^T Y_bc, chunk rows each, fp32
//      (short fp32 sums; many CTAs even for a few heads). cov_gpu_math::tf32x3 instead splits
//      y = hi + lo (hi exact in TF32) and computes [hi]^T [hi | lo] on TF32 tensor cores, so that
//      G = hi^T hi + hi^T lo + (hi^T lo)^T keeps ~fp32 accuracy (lo^T lo, ~2^-22, is dropped);
//   4. merge_kernel (fp64): G_b = sum_c G_bc; M2_block = G_b - s s^T / n_b around the block mean
//      c_b + s_b / n_b, then Chan's merge into (mean, M2).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <vector>

#include "calibrate/covariance_gpu.h"
#include "kernels/common/cuda_device.h"
#include "kernels/common/error.h"

namespace kvcal {

namespace {

#define KVCAL_CUDA_OK(expr)                                                        \
  do {                                                                             \
    cudaError_t e_ = (expr);                                                       \
    KVCAL_CHECK(e_ == cudaSuccess, "CUDA: ", #expr, ": ", cudaGetErrorString(e_)); \
  } while (0)
#define KVCAL_CUBLAS_OK(expr)                                                \
  do {                                                                       \
    cublasStatus_t s_ = (expr);                                              \
    KVCAL_CHECK(s_ == CUBLAS_STATUS_SUCCESS, "cuBLAS: ", #expr, ": status ", \
                static_cast<int>(s_));                                       \
  } while (0)

// fp32 GEMM reduction length per batch entry (one 128x128 output tile each). Measured on an H200
// (bench_pca, 8192-token blocks): 1024 rows 2.55 M tok/s, 256 rows 2.32 M tok/s (the per-chunk
// partial products cost more traffic than the extra CTAs win).
constexpr std::int64_t chunk_rows = 1024;

// Layout of one block: batch entry b, vector v, component j lives at x[b * bstride + v * ld + j].
struct block_layout {
  std::int64_t n_batch, nvec, d, ld, bstride;
};

// Rows [v0, v1) of every column per thread; grid.x covers n_batch * d columns, grid.y the rows.
__device__ inline void row_range(const block_layout& l, std::int64_t nvec_pad, std::int64_t* v0,
                                 std::int64_t* v1) {
  const std::int64_t per = (nvec_pad + gridDim.y - 1) / gridDim.y;
  *v0 = blockIdx.y * per;
  *v1 = min(nvec_pad, *v0 + per);
}

// sums[b * d + j] = sum over the block's vectors of x (fp64); sums must be zeroed.
__global__ void column_sum_kernel(const float* __restrict__ x, block_layout l,
                                  double* __restrict__ sums) {
  const std::int64_t col = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (col >= l.n_batch * l.d) return;
  const std::int64_t b = col / l.d, j = col % l.d;
  std::int64_t v0, v1;
  row_range(l, l.nvec, &v0, &v1);
  double s = 0;
  const float* p = x + b * l.bstride + j;
  for (std::int64_t v = v0; v < v1; ++v) s += p[v * l.ld];
  atomicAdd(&sums[col], s);
}

__global__ void scale_kernel(double* __restrict__ v, std::int64_t n, double f) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) v[i] *= f;
}

// y[b][v][j] = x - shift (fp32; rows nvec..nvec_pad-1 are 0), sums[b * d + j] += sum of y (fp64).
// Nearest TF32 value (10-bit mantissa) of a finite float.
__device__ inline float round_tf32(float v) {
  unsigned u = __float_as_uint(v);
  u = (u + 0x1000u) & 0xffffe000u;
  return __uint_as_float(u);
}

// split: rows are [hi (d) | lo (d)] with y = hi + lo, hi exact in TF32.
template <bool split>
__global__ void shift_kernel(const float* __restrict__ x, block_layout l, std::int64_t nvec_pad,
                             const double* __restrict__ shift, float* __restrict__ y,
                             double* __restrict__ sums) {
  const std::int64_t col = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (col >= l.n_batch * l.d) return;
  const std::int64_t b = col / l.d, j = col % l.d;
  std::int64_t v0, v1;
  row_range(l, nvec_pad, &v0, &v1);
  const double c = shift[col];
  const float* p = x + b * l.bstride + j;
  constexpr int w = split ? 2 : 1;
  float* q = y + b * nvec_pad * w * l.d + j;
  double s = 0;
  for (std::int64_t v = v0; v < v1; ++v) {
    // The sum takes the unrounded difference: the mean stays exact to fp64.
    const double dv = v < l.nvec ? static_cast<double>(p[v * l.ld]) - c : 0.0;
    const float val = static_cast<float>(dv);
    if (split) {
      const float hi = round_tf32(val);
      q[v * 2 * l.d] = hi;
      q[v * 2 * l.d + l.d] = val - hi;
    } else {
      q[v * l.d] = val;
    }
    s += dv;
  }
  atomicAdd(&sums[col], s);
}

// Chan merge of the block into (n_a, mean, m2), fp64. The block: n_b vectors, shift c, shifted
// sums s, shifted scatter G = sum over chunks of g. Updates m2 only (means: mean_update_kernel).
// g: per (b, chunk) column-major [d, d] (fp32) or [d, 2d] = [hi^T hi | hi^T lo] (split).
template <bool split>
__global__ void merge_m2_kernel(double* __restrict__ m2, const double* __restrict__ mean,
                                const float* __restrict__ g, std::int64_t n_chunks,
                                const double* __restrict__ shift, const double* __restrict__ sums,
                                std::int64_t n_batch, std::int64_t d, double n_a, double n_b) {
  const std::int64_t total = n_batch * d * d;
  const double w = n_a * n_b / (n_a + n_b);
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t c = i % d, r = (i / d) % d, b = i / (d * d);
    double gs = 0;
    if (split) {
      const std::int64_t cs = 2 * d * d;  // per chunk
      const float* gp = g + b * n_chunks * cs;
      for (std::int64_t k = 0; k < n_chunks; ++k, gp += cs)
        gs += static_cast<double>(gp[c * d + r]) + static_cast<double>(gp[(d + c) * d + r]) +
              static_cast<double>(gp[(d + r) * d + c]);
    } else {
      const float* gp = g + b * n_chunks * d * d + c * d + r;
      for (std::int64_t k = 0; k < n_chunks; ++k) gs += static_cast<double>(gp[k * d * d]);
    }
    const double sr = sums[b * d + r], sc = sums[b * d + c];
    const double dr = shift[b * d + r] + sr / n_b - mean[b * d + r];
    const double dc = shift[b * d + c] + sc / n_b - mean[b * d + c];
    m2[i] += (gs - sr * sc / n_b) + dr * dc * w;
  }
}

__global__ void mean_update_kernel(double* __restrict__ mean, const double* __restrict__ shift,
                                   const double* __restrict__ sums, std::int64_t n, double n_a,
                                   double n_b) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const double delta = shift[i] + sums[i] / n_b - mean[i];
  mean[i] += delta * (n_b / (n_a + n_b));
}

int grid_for(std::int64_t n, int threads) {
  std::int64_t g = (n + threads - 1) / threads;
  return static_cast<int>(g < 4096 ? (g < 1 ? 1 : g) : 4096);
}

// Enough row slices that ~64k threads stream the block.
unsigned row_slices(std::int64_t cols, std::int64_t rows) {
  const std::int64_t want = std::max<std::int64_t>(1, 65536 / std::max<std::int64_t>(cols, 1));
  return static_cast<unsigned>(std::min(want, std::max<std::int64_t>(1, rows / 16)));
}

}  // namespace

bool covariance_gpu_compiled() {
  return true;
}

struct cov_accumulator_gpu::impl {
  std::int64_t n_kv = 0, d = 0, max_rows = 0, n_batch = 0, n_slots = 1, max_pad = 0;
  bool pooled = false;
  cov_gpu_math math = cov_gpu_math::fp32;
  std::vector<double> count;  // [n_slots]
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  float* d_in = nullptr;       // [max_rows, n_kv, d] staging for add_host
  float* d_shifted = nullptr;  // [n_batch, max_pad, d]
  float* d_g = nullptr;        // [n_batch, max_pad / chunk, d, d]
  double* d_sums = nullptr;    // [n_batch, d]
  double* d_shift = nullptr;   // [n_batch, d]
  double* d_mean = nullptr;    // [n_slots, n_batch, d]
  double* d_m2 = nullptr;      // [n_slots, n_batch, d, d]

  ~impl() {
    cudaFree(d_in);
    cudaFree(d_shifted);
    cudaFree(d_g);
    cudaFree(d_sums);
    cudaFree(d_shift);
    cudaFree(d_mean);
    cudaFree(d_m2);
    if (blas) cublasDestroy(blas);
    if (stream) cudaStreamDestroy(stream);
  }
};

cov_accumulator_gpu::cov_accumulator_gpu(std::int64_t n_kv, std::int64_t d, bool pooled,
                                         std::int64_t max_rows, std::int64_t n_slots,
                                         cov_gpu_math math)
    : p_(std::make_unique<impl>()) {
  KVCAL_CHECK(cuda_device_count() > 0, "GPU covariance: no CUDA device (", cuda_device_summary(),
              ")");
  KVCAL_CHECK(n_kv > 0 && d > 0 && max_rows > 0 && n_slots > 0, "GPU covariance: bad sizes");
  impl& m = *p_;
  m.n_kv = n_kv;
  m.d = d;
  m.pooled = pooled;
  m.max_rows = max_rows;
  m.n_batch = pooled ? 1 : n_kv;
  m.n_slots = n_slots;
  m.math = math;
  const std::int64_t w = math == cov_gpu_math::tf32x3 ? 2 : 1;
  m.count.assign(static_cast<size_t>(n_slots), 0.0);
  const std::int64_t max_nvec = pooled ? max_rows * n_kv : max_rows;
  m.max_pad = (max_nvec + chunk_rows - 1) / chunk_rows * chunk_rows;
  const size_t cols = static_cast<size_t>(m.n_batch * d);
  const size_t stat_vec = static_cast<size_t>(n_slots) * cols;
  const size_t stat_mat = stat_vec * static_cast<size_t>(d);
  KVCAL_CUDA_OK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  KVCAL_CUBLAS_OK(cublasCreate(&m.blas));
  KVCAL_CUBLAS_OK(cublasSetStream(m.blas, m.stream));
  // Plain fp32 FMA math: TF32 would cost ~3 decimal digits of the covariance.
  KVCAL_CUBLAS_OK(cublasSetMathMode(m.blas, CUBLAS_PEDANTIC_MATH));
  KVCAL_CUDA_OK(cudaMalloc(&m.d_in, static_cast<size_t>(max_rows * n_kv * d) * sizeof(float)));
  KVCAL_CUDA_OK(
      cudaMalloc(&m.d_shifted, static_cast<size_t>(m.n_batch * m.max_pad * w * d) * sizeof(float)));
  KVCAL_CUDA_OK(cudaMalloc(
      &m.d_g,
      static_cast<size_t>(m.n_batch * (m.max_pad / chunk_rows) * w * d * d) * sizeof(float)));
  KVCAL_CUDA_OK(cudaMalloc(&m.d_sums, cols * sizeof(double)));
  KVCAL_CUDA_OK(cudaMalloc(&m.d_shift, cols * sizeof(double)));
  KVCAL_CUDA_OK(cudaMalloc(&m.d_mean, stat_vec * sizeof(double)));
  KVCAL_CUDA_OK(cudaMalloc(&m.d_m2, stat_mat * sizeof(double)));
  KVCAL_CUDA_OK(cudaMemsetAsync(m.d_mean, 0, stat_vec * sizeof(double), m.stream));
  KVCAL_CUDA_OK(cudaMemsetAsync(m.d_m2, 0, stat_mat * sizeof(double), m.stream));
}

cov_accumulator_gpu::~cov_accumulator_gpu() = default;

void cov_accumulator_gpu::add_host(const float* x, std::int64_t rows, std::int64_t slot) {
  impl& m = *p_;
  KVCAL_CHECK(rows <= m.max_rows, "GPU covariance: block of ", rows, " rows > ", m.max_rows);
  if (rows <= 0) return;
  KVCAL_CUDA_OK(cudaMemcpyAsync(m.d_in, x, static_cast<size_t>(rows * m.n_kv * m.d) * sizeof(float),
                                cudaMemcpyHostToDevice, m.stream));
  add_device(m.d_in, rows, slot);
  // The caller reuses x right away: wait for the copy (and the work queued behind it).
  KVCAL_CUDA_OK(cudaStreamSynchronize(m.stream));
}

void cov_accumulator_gpu::add_device(const float* d_x, std::int64_t rows, std::int64_t slot) {
  impl& m = *p_;
  KVCAL_CHECK(rows <= m.max_rows, "GPU covariance: block of ", rows, " rows > ", m.max_rows);
  KVCAL_CHECK(slot >= 0 && slot < m.n_slots, "GPU covariance: slot ", slot, " out of range");
  if (rows <= 0) return;
  block_layout l{};
  l.d = m.d;
  l.n_batch = m.n_batch;
  if (m.pooled) {
    l.nvec = rows * m.n_kv;
    l.ld = m.d;
    l.bstride = 0;
  } else {
    l.nvec = rows;
    l.ld = m.n_kv * m.d;
    l.bstride = m.d;
  }
  const std::int64_t n_chunks = (l.nvec + chunk_rows - 1) / chunk_rows;
  const std::int64_t chunk = l.nvec < chunk_rows ? l.nvec : chunk_rows;
  const std::int64_t nvec_pad = n_chunks * chunk;
  const std::int64_t cols = l.n_batch * l.d;
  double* mean = m.d_mean + slot * cols;
  double* m2 = m.d_m2 + slot * cols * m.d;
  double& count = m.count[static_cast<size_t>(slot)];
  const size_t col_bytes = static_cast<size_t>(cols) * sizeof(double);
  const int threads = 128;
  const unsigned col_blocks = static_cast<unsigned>((cols + threads - 1) / threads);
  // 1. Shift: the running mean, or the first block's own mean.
  if (count > 0) {
    KVCAL_CUDA_OK(cudaMemcpyAsync(m.d_shift, mean, col_bytes, cudaMemcpyDeviceToDevice, m.stream));
  } else {
    KVCAL_CUDA_OK(cudaMemsetAsync(m.d_shift, 0, col_bytes, m.stream));
    column_sum_kernel<<<dim3(col_blocks, row_slices(cols, l.nvec)), threads, 0, m.stream>>>(
        d_x, l, m.d_shift);
    scale_kernel<<<static_cast<unsigned>((cols + 255) / 256), 256, 0, m.stream>>>(
        m.d_shift, cols, 1.0 / static_cast<double>(l.nvec));
  }
  // 2. Shifted fp32 copy + fp64 sums.
  KVCAL_CUDA_OK(cudaMemsetAsync(m.d_sums, 0, col_bytes, m.stream));
  const bool split = m.math == cov_gpu_math::tf32x3;
  const dim3 sgrid(col_blocks, row_slices(cols, nvec_pad));
  if (split)
    shift_kernel<true>
        <<<sgrid, threads, 0, m.stream>>>(d_x, l, nvec_pad, m.d_shift, m.d_shifted, m.d_sums);
  else
    shift_kernel<false>
        <<<sgrid, threads, 0, m.stream>>>(d_x, l, nvec_pad, m.d_shift, m.d_shifted, m.d_sums);
  KVCAL_CUDA_OK(cudaGetLastError());
  // 3. G_(b,c) = Y_(b,c)^T Y_(b,c): Y_(b,c) seen column-major as [d, chunk] (lda = d); batch entry
  // (b, c) starts at (b * nvec_pad + c * chunk) * d = ((b * n_chunks) + c) * chunk * d.
  const float one = 1.0f, zero = 0.0f;
  const int di = static_cast<int>(m.d);
  if (split) {
    // [d, 2d] = hi (rows 0..d-1 of the [2d, chunk] column-major view) x [hi; lo]^T.
    KVCAL_CUBLAS_OK(cublasGemmStridedBatchedEx(
        m.blas, CUBLAS_OP_N, CUBLAS_OP_T, di, 2 * di, static_cast<int>(chunk), &one, m.d_shifted,
        CUDA_R_32F, 2 * di, chunk * 2 * m.d, m.d_shifted, CUDA_R_32F, 2 * di, chunk * 2 * m.d,
        &zero, m.d_g, CUDA_R_32F, di, 2 * m.d * m.d, static_cast<int>(l.n_batch * n_chunks),
        CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
  } else {
    KVCAL_CUBLAS_OK(cublasSgemmStridedBatched(
        m.blas, CUBLAS_OP_N, CUBLAS_OP_T, di, di, static_cast<int>(chunk), &one, m.d_shifted, di,
        chunk * m.d, m.d_shifted, di, chunk * m.d, &zero, m.d_g, di, m.d * m.d,
        static_cast<int>(l.n_batch * n_chunks)));
  }
  // 4. Chan merge in fp64.
  const double n_b = static_cast<double>(l.nvec);
  const int mgrid = grid_for(l.n_batch * m.d * m.d, 256);
  if (split)
    merge_m2_kernel<true><<<mgrid, 256, 0, m.stream>>>(m2, mean, m.d_g, n_chunks, m.d_shift,
                                                       m.d_sums, l.n_batch, m.d, count, n_b);
  else
    merge_m2_kernel<false><<<mgrid, 256, 0, m.stream>>>(m2, mean, m.d_g, n_chunks, m.d_shift,
                                                        m.d_sums, l.n_batch, m.d, count, n_b);
  mean_update_kernel<<<static_cast<unsigned>((cols + 255) / 256), 256, 0, m.stream>>>(
      mean, m.d_shift, m.d_sums, cols, count, n_b);
  KVCAL_CUDA_OK(cudaGetLastError());
  count += n_b;
}

void cov_accumulator_gpu::synchronize() {
  KVCAL_CUDA_OK(cudaStreamSynchronize(p_->stream));
}

std::vector<cov_stats> cov_accumulator_gpu::download(std::int64_t slot) {
  impl& m = *p_;
  KVCAL_CHECK(slot >= 0 && slot < m.n_slots, "GPU covariance: slot ", slot, " out of range");
  synchronize();
  const std::int64_t cols = m.n_batch * m.d;
  std::vector<cov_stats> out(static_cast<size_t>(m.n_batch), cov_stats(m.d));
  for (std::int64_t b = 0; b < m.n_batch; ++b) {
    cov_stats& s = out[static_cast<size_t>(b)];
    s.count = m.count[static_cast<size_t>(slot)];
    KVCAL_CUDA_OK(cudaMemcpy(s.mean.data(), m.d_mean + slot * cols + b * m.d,
                             static_cast<size_t>(m.d) * sizeof(double), cudaMemcpyDeviceToHost));
    KVCAL_CUDA_OK(cudaMemcpy(s.m2.data(), m.d_m2 + (slot * cols + b * m.d) * m.d,
                             static_cast<size_t>(m.d * m.d) * sizeof(double),
                             cudaMemcpyDeviceToHost));
  }
  return out;
}

}  // namespace kvcal
