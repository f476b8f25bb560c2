// GPU covariance accumulation: see calibrate/covariance_gpu.h.
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

// Layout of one block: batch entry b, vector v, component j lives at x[b * bstride + v * ld + j].
struct block_layout {
  std::int64_t n_batch, nvec, d, ld, bstride;
};

// sums[b * d + j] += sum over vectors of x (fp64). grid.x covers n_batch * d columns, grid.y
// splits the vectors so that enough threads are in flight.
__global__ void column_sum_kernel(const float* __restrict__ x, block_layout l,
                                  double* __restrict__ sums) {
  const std::int64_t col = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (col >= l.n_batch * l.d) return;
  const std::int64_t b = col / l.d, j = col % l.d;
  const std::int64_t per = (l.nvec + gridDim.y - 1) / gridDim.y;
  const std::int64_t v0 = blockIdx.y * per, v1 = min(l.nvec, v0 + per);
  double s = 0;
  const float* p = x + b * l.bstride + j;
  for (std::int64_t v = v0; v < v1; ++v) s += p[v * l.ld];
  atomicAdd(&sums[col], s);
}

// out[b][v][j] (compact, [n_batch, nvec, d]) = x - block mean, in fp32.
__global__ void center_kernel(const float* __restrict__ x, block_layout l,
                              const double* __restrict__ sums, float* __restrict__ out) {
  const std::int64_t total = l.n_batch * l.nvec * l.d;
  const double inv = 1.0 / static_cast<double>(l.nvec);
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t j = i % l.d, v = (i / l.d) % l.nvec, b = i / (l.d * l.nvec);
    out[i] = static_cast<float>(static_cast<double>(x[b * l.bstride + v * l.ld + j]) -
                                sums[b * l.d + j] * inv);
  }
}

// Chan merge of the block (n_b vectors, mean sums/n_b, scatter g) into (n_a, mean, m2), fp64.
// m2 update only; the means are updated afterwards by mean_update_kernel.
__global__ void merge_m2_kernel(double* __restrict__ m2, const double* __restrict__ mean,
                                const float* __restrict__ g, const double* __restrict__ sums,
                                std::int64_t n_batch, std::int64_t d, double n_a, double n_b) {
  const std::int64_t total = n_batch * d * d;
  const double w = n_a * n_b / (n_a + n_b);
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t c = i % d, r = (i / d) % d, b = i / (d * d);
    const double dr = sums[b * d + r] / n_b - mean[b * d + r];
    const double dc = sums[b * d + c] / n_b - mean[b * d + c];
    m2[i] += static_cast<double>(g[i]) + dr * dc * w;
  }
}

__global__ void mean_update_kernel(double* __restrict__ mean, const double* __restrict__ sums,
                                   std::int64_t n, double n_a, double n_b) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const double delta = sums[i] / n_b - mean[i];
  mean[i] += delta * (n_b / (n_a + n_b));
}

int grid_for(std::int64_t n, int threads) {
  std::int64_t g = (n + threads - 1) / threads;
  return static_cast<int>(g < 4096 ? (g < 1 ? 1 : g) : 4096);
}

}  // namespace

bool covariance_gpu_compiled() {
  return true;
}

struct cov_accumulator_gpu::impl {
  std::int64_t n_kv = 0, d = 0, max_rows = 0, n_batch = 0, n_slots = 1;
  bool pooled = false;
  std::vector<double> count;  // [n_slots]
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  float* d_in = nullptr;        // [max_rows, n_kv, d] staging for add_host
  float* d_centered = nullptr;  // [n_batch, nvec, d]
  float* d_g = nullptr;         // [n_batch, d, d]
  double* d_sums = nullptr;     // [n_batch, d]
  double* d_mean = nullptr;     // [n_slots, n_batch, d]
  double* d_m2 = nullptr;       // [n_slots, n_batch, d, d]

  ~impl() {
    cudaFree(d_in);
    cudaFree(d_centered);
    cudaFree(d_g);
    cudaFree(d_sums);
    cudaFree(d_mean);
    cudaFree(d_m2);
    if (blas) cublasDestroy(blas);
    if (stream) cudaStreamDestroy(stream);
  }
};

cov_accumulator_gpu::cov_accumulator_gpu(std::int64_t n_kv, std::int64_t d, bool pooled,
                                         std::int64_t max_rows, std::int64_t n_slots)
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
  m.count.assign(static_cast<size_t>(n_slots), 0.0);
  const size_t stat_vec = static_cast<size_t>(n_slots * m.n_batch * d);
  const size_t stat_mat = stat_vec * static_cast<size_t>(d);
  KVCAL_CUDA_OK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  KVCAL_CUBLAS_OK(cublasCreate(&m.blas));
  KVCAL_CUBLAS_OK(cublasSetStream(m.blas, m.stream));
  // Plain fp32 FMA math: TF32 would cost ~3 decimal digits of the covariance.
  KVCAL_CUBLAS_OK(cublasSetMathMode(m.blas, CUBLAS_PEDANTIC_MATH));
  const size_t rows_el = static_cast<size_t>(max_rows * n_kv * d);
  KVCAL_CUDA_OK(cudaMalloc(&m.d_in, rows_el * sizeof(float)));
  KVCAL_CUDA_OK(cudaMalloc(&m.d_centered, rows_el * sizeof(float)));
  KVCAL_CUDA_OK(cudaMalloc(&m.d_g, static_cast<size_t>(m.n_batch * d * d) * sizeof(float)));
  KVCAL_CUDA_OK(cudaMalloc(&m.d_sums, static_cast<size_t>(m.n_batch * d) * sizeof(double)));
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
  const std::int64_t cols = l.n_batch * l.d;
  double* mean = m.d_mean + slot * cols;
  double* m2 = m.d_m2 + slot * cols * m.d;
  double& count = m.count[static_cast<size_t>(slot)];
  KVCAL_CUDA_OK(cudaMemsetAsync(m.d_sums, 0, static_cast<size_t>(cols) * sizeof(double), m.stream));
  {
    const int threads = 128;
    dim3 grid(
        static_cast<unsigned>((cols + threads - 1) / threads),
        static_cast<unsigned>(std::min<std::int64_t>(std::max<std::int64_t>(l.nvec / 64, 1), 256)));
    column_sum_kernel<<<grid, threads, 0, m.stream>>>(d_x, l, m.d_sums);
  }
  center_kernel<<<grid_for(l.n_batch * l.nvec * l.d, 256), 256, 0, m.stream>>>(d_x, l, m.d_sums,
                                                                               m.d_centered);
  KVCAL_CUDA_OK(cudaGetLastError());
  // G_b = C_b C_b^T with C_b = the centred block seen column-major as [d, nvec] (lda = d).
  const float one = 1.0f, zero = 0.0f;
  const int di = static_cast<int>(m.d);
  KVCAL_CUBLAS_OK(cublasSgemmStridedBatched(m.blas, CUBLAS_OP_N, CUBLAS_OP_T, di, di,
                                            static_cast<int>(l.nvec), &one, m.d_centered, di,
                                            l.nvec * m.d, m.d_centered, di, l.nvec * m.d, &zero,
                                            m.d_g, di, m.d * m.d, static_cast<int>(l.n_batch)));
  const double n_b = static_cast<double>(l.nvec);
  merge_m2_kernel<<<grid_for(l.n_batch * m.d * m.d, 256), 256, 0, m.stream>>>(
      m2, mean, m.d_g, m.d_sums, l.n_batch, m.d, count, n_b);
  mean_update_kernel<<<static_cast<unsigned>((cols + 255) / 256), 256, 0, m.stream>>>(
      mean, m.d_sums, cols, count, n_b);
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
