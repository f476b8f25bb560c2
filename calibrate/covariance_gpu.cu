// GPU covariance accumulation: see calibrate/covariance_gpu.h.
//
// Per block of rows and per batch entry b (a KV head, or the whole layer when pooled):
//   1. shift c_b: the running mean of the statistic (the block's own mean for the first block,
//      one extra column-sum pass), so the fp32 values below are small;
//   2. reduction to G_b = sum over chunks of Y_bc^T Y_bc (Y = x - c) and fp64 sums s_b of Y:
//      - fp32 / tf32x3: shift_kernel writes y in fp32 into a padded [n_batch, n_chunks * chunk, d]
//        buffer (pad rows 0), then one cublasSgemmStridedBatched over (b, chunk), fp32. tf32x3
//        instead splits y = hi + lo (hi exact in TF32) and computes [hi]^T [hi | lo] on TF32
//        tensor cores, G = hi^T hi + hi^T lo + (hi^T lo)^T (lo^T lo, ~2^-22, is dropped);
//      - fp16x3 (fp16 input too, d 16/32/64/128): split_gram_kernel, one CTA per (chunk, b):
//        reads its rows twice (per-column max |y| for a power-of-two scale, then the data; the
//        second read hits L2), stages hi / lo fp16 tiles of 64 rows in shared memory and
//        accumulates the upper triangle of 16x16 tiles with WMMA (fp16 in, fp32 accumulate);
//   3. merge (fp64): G_b = sum_c G_bc; M2_block = G_b - s s^T / n_b around the block mean
//      c_b + s_b / n_b, then Chan's merge into (mean, M2).
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <string>
#include <vector>

#include "calibrate/covariance_gpu.h"
#include "kernels/common/cuda_check.h"
#include "kernels/common/cuda_device.h"
#include "kernels/common/error.h"

namespace kvcal {

namespace {

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

__device__ inline float to_float(float v) {
  return v;
}
__device__ inline float to_float(__half v) {
  return __half2float(v);
}

// sums[b * d + j] = sum over the block's vectors of x (fp64); sums must be zeroed.
template <typename T>
__global__ void column_sum_kernel(const T* __restrict__ x, block_layout l,
                                  double* __restrict__ sums) {
  const std::int64_t col = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (col >= l.n_batch * l.d) return;
  const std::int64_t b = col / l.d, j = col % l.d;
  std::int64_t v0, v1;
  row_range(l, l.nvec, &v0, &v1);
  double s = 0;
  const T* p = x + b * l.bstride + j;
  for (std::int64_t v = v0; v < v1; ++v) s += to_float(p[v * l.ld]);
  atomicAdd(&sums[col], s);
}

__global__ void half_to_float_kernel(const __half* __restrict__ x, float* __restrict__ y,
                                     std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    y[i] = __half2float(x[i]);
}

// ---- fp16x3: fused split Gram kernel ----------------------------------------------------------

constexpr int split_threads = 256;  // 8 warps
constexpr int split_warps = split_threads / 32;
constexpr int split_tile_rows = 64;  // rows staged per shared-memory tile (4 WMMA k-steps)

struct split_params {
  const void* x;  // [rows, n_kv, d] of T (layout l)
  block_layout l;
  std::int64_t chunk;     // vectors per CTA (multiple of split_tile_rows)
  std::int64_t n_chunks;  // grid.x
  const double* shift;    // [n_batch, d]
  float* g;               // [n_batch, n_chunks, d, d] row-major; only upper 16x16 tiles written
  float* inv_scale;       // [n_batch, n_chunks, d]: 2^-e of each column's scale
  double* sums;           // [n_batch, d]: fp64 sums of x - shift, added to (zero on entry)
};

// Two adjacent columns (j, j + 1) of one vector as floats.
__device__ inline float2 load_pair(const float* p) {
  return *reinterpret_cast<const float2*>(p);
}
__device__ inline float2 load_pair(const __half* p) {
  return __half22float2(*reinterpret_cast<const __half2*>(p));
}

// Upper-triangle tile u (row-major order over tm <= tn) of an nt x nt tile grid.
__device__ inline void upper_tile(int u, int nt, int* tm, int* tn) {
  int m = 0;
  while (u >= nt - m) {
    u -= nt - m;
    ++m;
  }
  *tm = m;
  *tn = m + u;
}

// grid (n_chunks, n_batch), split_threads threads. Thread t owns the column pair (2 cp, 2 cp + 1),
// cp = t % (D / 2), and the rows rg, rg + RG, ... of every pass (rg = t / (D / 2)).
template <typename T, int NT>
__global__ void __launch_bounds__(split_threads, 2) split_gram_kernel(split_params p) {
  using namespace nvcuda;
  constexpr int D = 16 * NT;
  constexpr int LD = D + 8;  // halves: padding against bank conflicts, a multiple of 8 for WMMA
  constexpr int CP = D / 2;
  constexpr int RG = split_threads / CP;
  constexpr int n_upper = NT * (NT + 1) / 2;
  constexpr int per_warp = (n_upper + split_warps - 1) / split_warps;
  static_assert(split_tile_rows % RG == 0, "rows per pass must divide the tile");
  __shared__ __align__(32) __half s_hi[split_tile_rows * LD];
  __shared__ __align__(32) __half s_lo[split_tile_rows * LD];
  __shared__ float s_red[RG * D];
  __shared__ double s_sum[RG * D];
  __shared__ float s_scale[D];

  const std::int64_t b = blockIdx.y, k = blockIdx.x;
  const std::int64_t v0 = k * p.chunk;
  const std::int64_t v1 = min(p.l.nvec, v0 + p.chunk);
  const int t = threadIdx.x, cp = t % CP, rg = t / CP, j = 2 * cp;
  const T* xb = static_cast<const T*>(p.x) + b * p.l.bstride + j;
  const double c0 = p.shift[b * D + j], c1 = p.shift[b * D + j + 1];
  const std::int64_t chunk_col = (b * p.n_chunks + k) * D;  // [b][k][0] of inv_scale

  // Pass 1: per-column max |x - shift| -> scale 2^e with max |y| * 2^e in [2^9, 2^10).
  {
    const float f0 = static_cast<float>(c0), f1 = static_cast<float>(c1);
    float m0 = 0, m1 = 0;
    for (std::int64_t v = v0 + rg; v < v1; v += RG) {
      const float2 a = load_pair(xb + v * p.l.ld);
      m0 = fmaxf(m0, fabsf(a.x - f0));
      m1 = fmaxf(m1, fabsf(a.y - f1));
    }
    s_red[rg * D + j] = m0;
    s_red[rg * D + j + 1] = m1;
    __syncthreads();
    if (t < D) {
      float m = 0;
      for (int r = 0; r < RG; ++r) m = fmaxf(m, s_red[r * D + t]);
      int e = 0;
      if (m > 0 && isfinite(m)) {
        frexpf(m * 1.001f, &e);  // m * 1.001 < 2^e: headroom for fp32 vs fp64 differences
        e = max(-100, min(100, e));
      }
      const float scale = m > 0 && isfinite(m) ? ldexpf(1.0f, 10 - e) : 1.0f;
      s_scale[t] = scale;
      p.inv_scale[chunk_col + t] = 1.0f / scale;  // exact: a power of two
    }
    __syncthreads();
  }
  const float sc0 = s_scale[j], sc1 = s_scale[j + 1];

  // Pass 2: tiles of rows -> hi / lo in shared memory -> WMMA on the warp's upper tiles.
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc, total[per_warp];
  for (int i = 0; i < per_warp; ++i) wmma::fill_fragment(total[i], 0.0f);
  const int warp = t / 32;
  double sum0 = 0, sum1 = 0;
  for (std::int64_t vt = v0; vt < v1; vt += split_tile_rows) {
    for (int r = rg; r < split_tile_rows; r += RG) {
      const std::int64_t v = vt + r;
      __half2 hi = __floats2half2_rn(0.0f, 0.0f), lo = hi;
      if (v < v1) {
        const float2 a = load_pair(xb + v * p.l.ld);
        // The sums take the unrounded difference: the mean stays exact to fp64.
        const double d0 = static_cast<double>(a.x) - c0, d1 = static_cast<double>(a.y) - c1;
        sum0 += d0;
        sum1 += d1;
        const float y0 = static_cast<float>(d0) * sc0, y1 = static_cast<float>(d1) * sc1;
        hi = __floats2half2_rn(y0, y1);
        const float2 h = __half22float2(hi);
        lo = __floats2half2_rn(y0 - h.x, y1 - h.y);
      }
      *reinterpret_cast<__half2*>(&s_hi[r * LD + j]) = hi;
      *reinterpret_cast<__half2*>(&s_lo[r * LD + j]) = lo;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < per_warp; ++i) {
      const int u = warp + i * split_warps;
      if (u >= n_upper) break;
      int tm, tn;
      upper_tile(u, NT, &tm, &tn);
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int ks = 0; ks < split_tile_rows / 16; ++ks) {
        // A = Y^T (rows tm of G): element (m, k) at Y[k][m] -> column-major, ld LD.
        // B = Y (columns tn of G): element (k, n) at Y[k][n] -> row-major, ld LD.
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::col_major> a_hi, a_lo;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> b_hi, b_lo;
        const int off_a = ks * 16 * LD + tm * 16, off_b = ks * 16 * LD + tn * 16;
        wmma::load_matrix_sync(a_hi, s_hi + off_a, LD);
        wmma::load_matrix_sync(a_lo, s_lo + off_a, LD);
        wmma::load_matrix_sync(b_hi, s_hi + off_b, LD);
        wmma::load_matrix_sync(b_lo, s_lo + off_b, LD);
        wmma::mma_sync(acc, a_hi, b_hi, acc);
        wmma::mma_sync(acc, a_hi, b_lo, acc);
        wmma::mma_sync(acc, a_lo, b_hi, acc);
      }
      // Short tensor-core sums (64 rows), then an ordinary fp32 sum across tiles.
      for (int e = 0; e < acc.num_elements; ++e) total[i].x[e] += acc.x[e];
    }
    __syncthreads();
  }
  float* g = p.g + (b * p.n_chunks + k) * D * D;
#pragma unroll
  for (int i = 0; i < per_warp; ++i) {
    const int u = warp + i * split_warps;
    if (u >= n_upper) break;
    int tm, tn;
    upper_tile(u, NT, &tm, &tn);
    wmma::store_matrix_sync(g + tm * 16 * D + tn * 16, total[i], D, wmma::mem_row_major);
  }
  s_sum[rg * D + j] = sum0;
  s_sum[rg * D + j + 1] = sum1;
  __syncthreads();
  if (t < D) {
    double s = 0;
    for (int r = 0; r < RG; ++r) s += s_sum[r * D + t];
    atomicAdd(&p.sums[b * D + t], s);
  }
}

// Chan merge of split_gram_kernel's output (see merge_m2_kernel), unscaled per chunk. Only the
// upper 16x16 tiles of g exist: element (r, c) of an upper tile also updates (c, r). The means go
// to the other buffer (mean_new) and the diagonal threads zero the next call's sums, so one
// kernel does what merge_m2 + mean_update + a memset do on the GEMM route. shift may alias mean.
__global__ void merge_split_kernel(double* __restrict__ m2, const double* mean,
                                   double* __restrict__ mean_new, const float* __restrict__ g,
                                   const float* __restrict__ inv_scale, std::int64_t n_chunks,
                                   const double* shift, const double* __restrict__ sums,
                                   double* __restrict__ sums_next, std::int64_t n_batch,
                                   std::int64_t d, double n_a, double n_b) {
  const std::int64_t total = n_batch * d * d;
  const double w = n_a * n_b / (n_a + n_b);
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t c = i % d, r = (i / d) % d, b = i / (d * d);
    // Threads of upper tiles do the work (coalesced reads of g) and mirror it below.
    if (r / 16 > c / 16) continue;
    double gs = 0;
    for (std::int64_t k = 0; k < n_chunks; ++k) {
      const std::int64_t ch = b * n_chunks + k;
      const float* is = inv_scale + ch * d;
      gs += static_cast<double>(g[ch * d * d + r * d + c]) * (static_cast<double>(is[r]) * is[c]);
    }
    const double sr = sums[b * d + r], sc = sums[b * d + c];
    const double dr = shift[b * d + r] + sr / n_b - mean[b * d + r];
    const double dc = shift[b * d + c] + sc / n_b - mean[b * d + c];
    const double v = (gs - sr * sc / n_b) + dr * dc * w;
    m2[i] += v;
    if (r / 16 < c / 16) m2[b * d * d + c * d + r] += v;
    if (r == c) {
      mean_new[b * d + r] = mean[b * d + r] + dr * (n_b / (n_a + n_b));
      sums_next[b * d + r] = 0;
    }
  }
}

// d must satisfy cov_accumulator_gpu::half_kernel_supports (else cudaErrorInvalidValue).
template <typename T>
cudaError_t launch_split_gram(const split_params& p, std::int64_t d, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>(p.n_chunks), static_cast<unsigned>(p.l.n_batch));
  switch (d) {
    case 16:
      split_gram_kernel<T, 1><<<grid, split_threads, 0, s>>>(p);
      break;
    case 32:
      split_gram_kernel<T, 2><<<grid, split_threads, 0, s>>>(p);
      break;
    case 64:
      split_gram_kernel<T, 4><<<grid, split_threads, 0, s>>>(p);
      break;
    case 128:
      split_gram_kernel<T, 8><<<grid, split_threads, 0, s>>>(p);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
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

// shift may alias mean (blocks after the first shift by the running mean): no __restrict__ there.
__global__ void mean_update_kernel(double* mean, const double* shift,
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

bool cov_accumulator_gpu::half_kernel_supports(std::int64_t d) {
  return d == 16 || d == 32 || d == 64 || d == 128;
}

struct cov_accumulator_gpu::impl {
  std::int64_t n_kv = 0, d = 0, max_rows = 0, n_batch = 0, n_slots = 1, max_pad = 0;
  std::int64_t max_split_chunks = 0, split_chunk_override = 0;
  int sms = 1;
  bool pooled = false;
  cov_gpu_math math = cov_gpu_math::fp32;
  std::vector<double> count;  // [n_slots]
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  float* d_in = nullptr;  // [max_rows, n_kv, d] staging for add_host (and fp16 -> fp32)
  std::uint16_t* d_in_half = nullptr;  // [max_rows, n_kv, d] staging for add_host_half
  float* d_shifted = nullptr;          // [n_batch, max_pad, d] (fp32 / tf32x3)
  float* d_g = nullptr;                // per-chunk Gram matrices of either route
  float* d_inv_scale = nullptr;        // [n_batch, max_split_chunks, d] (fp16x3)
  double* d_split_sums = nullptr;      // [2, n_batch, d] (fp16x3: this call's, the next one's)
  int split_sums_cur = 0;
  double* d_sums = nullptr;   // [n_batch, d] (GEMM routes)
  double* d_shift = nullptr;  // [n_batch, d]
  double* d_mean = nullptr;   // [2, n_slots, n_batch, d]: mean_cur[slot] picks the half
  std::vector<int> mean_cur;  // [n_slots]
  double* d_m2 = nullptr;     // [n_slots, n_batch, d, d]

  ~impl() {
    cudaFree(d_in);
    cudaFree(d_in_half);
    cudaFree(d_shifted);
    cudaFree(d_g);
    cudaFree(d_inv_scale);
    cudaFree(d_split_sums);
    cudaFree(d_sums);
    cudaFree(d_shift);
    cudaFree(d_mean);
    cudaFree(d_m2);
    if (blas) cublasDestroy(blas);
    if (stream) cudaStreamDestroy(stream);
  }

  double* mean_of(std::int64_t slot, int half) const {
    return d_mean + (half * n_slots + slot) * n_batch * d;
  }

  block_layout layout(std::int64_t rows) const {
    block_layout l{};
    l.d = d;
    l.n_batch = n_batch;
    if (pooled) {
      l.nvec = rows * n_kv;
      l.ld = d;
      l.bstride = 0;
    } else {
      l.nvec = rows;
      l.ld = n_kv * d;
      l.bstride = d;
    }
    return l;
  }

  // Vectors per CTA of split_gram_kernel: about two CTAs per SM, 256..4096 rows, whole tiles.
  std::int64_t split_chunk(std::int64_t nvec) const {
    if (split_chunk_override > 0) return split_chunk_override;
    const std::int64_t want = (nvec * n_batch + 2 * sms - 1) / (2 * sms);
    const std::int64_t c = (want + split_tile_rows - 1) / split_tile_rows * split_tile_rows;
    return std::max<std::int64_t>(256, std::min<std::int64_t>(4096, c));
  }

  // The shift of this block (step 1): the running mean, or the block's own mean (first block).
  template <typename T>
  const double* block_shift(const T* d_x, const block_layout& l, const double* mean, double count) {
    if (count > 0) return mean;  // aliasing is safe: every kernel reads shift[i] before mean[i]
    const std::int64_t cols = l.n_batch * l.d;
    const int threads = 128;
    const unsigned col_blocks = static_cast<unsigned>((cols + threads - 1) / threads);
    KVCAL_CUDA_OK(cudaMemsetAsync(d_shift, 0, static_cast<size_t>(cols) * sizeof(double), stream));
    column_sum_kernel<T>
        <<<dim3(col_blocks, row_slices(cols, l.nvec)), threads, 0, stream>>>(d_x, l, d_shift);
    scale_kernel<<<static_cast<unsigned>((cols + 255) / 256), 256, 0, stream>>>(
        d_shift, cols, 1.0 / static_cast<double>(l.nvec));
    return d_shift;
  }

  void check_block(std::int64_t rows, std::int64_t slot) const {
    KVCAL_CHECK(rows <= max_rows, "GPU covariance: block of ", rows, " rows > ", max_rows);
    KVCAL_CHECK(slot >= 0 && slot < n_slots, "GPU covariance: slot ", slot, " out of range");
  }

  template <typename T>
  void add_split(const T* d_x, std::int64_t rows, std::int64_t slot);
  void add_gemm(const float* d_x, std::int64_t rows, std::int64_t slot);
};

template <typename T>
void cov_accumulator_gpu::impl::add_split(const T* d_x, std::int64_t rows, std::int64_t slot) {
  const block_layout l = layout(rows);
  const std::int64_t cols = l.n_batch * l.d;
  int& cur = mean_cur[static_cast<size_t>(slot)];
  const double* mean = mean_of(slot, cur);
  double* mean_new = mean_of(slot, 1 - cur);
  double* m2 = d_m2 + slot * cols * d;
  double& cnt = count[static_cast<size_t>(slot)];
  const double* shift = block_shift(d_x, l, mean, cnt);
  double* sums = d_split_sums + split_sums_cur * cols;
  double* sums_next = d_split_sums + (1 - split_sums_cur) * cols;
  split_params sp{};
  sp.x = d_x;
  sp.l = l;
  sp.chunk = split_chunk(l.nvec);
  sp.n_chunks = (l.nvec + sp.chunk - 1) / sp.chunk;
  KVCAL_ASSERT(sp.n_chunks <= max_split_chunks, "fp16x3 chunks exceed the staging size");
  sp.shift = shift;
  sp.g = d_g;
  sp.inv_scale = d_inv_scale;
  sp.sums = sums;
  KVCAL_CUDA_OK(launch_split_gram<T>(sp, d, stream));
  const double n_b = static_cast<double>(l.nvec);
  merge_split_kernel<<<grid_for(l.n_batch * d * d, 256), 256, 0, stream>>>(
      m2, mean, mean_new, d_g, d_inv_scale, sp.n_chunks, shift, sums, sums_next, l.n_batch, d, cnt,
      n_b);
  KVCAL_CUDA_OK(cudaGetLastError());
  cur = 1 - cur;
  split_sums_cur = 1 - split_sums_cur;
  cnt += n_b;
}

void cov_accumulator_gpu::impl::add_gemm(const float* d_x, std::int64_t rows, std::int64_t slot) {
  const block_layout l = layout(rows);
  const std::int64_t n_chunks = (l.nvec + chunk_rows - 1) / chunk_rows;
  const std::int64_t chunk = l.nvec < chunk_rows ? l.nvec : chunk_rows;
  const std::int64_t nvec_pad = n_chunks * chunk;
  const std::int64_t cols = l.n_batch * l.d;
  double* mean = mean_of(slot, mean_cur[static_cast<size_t>(slot)]);  // updated in place
  double* m2 = d_m2 + slot * cols * d;
  double& cnt = count[static_cast<size_t>(slot)];
  const int threads = 128;
  const unsigned col_blocks = static_cast<unsigned>((cols + threads - 1) / threads);
  // 1. Shift: the running mean, or the first block's own mean.
  const double* shift = block_shift(d_x, l, mean, cnt);
  // 2. Shifted fp32 copy + fp64 sums.
  KVCAL_CUDA_OK(cudaMemsetAsync(d_sums, 0, static_cast<size_t>(cols) * sizeof(double), stream));
  const bool split = math == cov_gpu_math::tf32x3;
  const dim3 sgrid(col_blocks, row_slices(cols, nvec_pad));
  if (split)
    shift_kernel<true><<<sgrid, threads, 0, stream>>>(d_x, l, nvec_pad, shift, d_shifted, d_sums);
  else
    shift_kernel<false><<<sgrid, threads, 0, stream>>>(d_x, l, nvec_pad, shift, d_shifted, d_sums);
  KVCAL_CUDA_OK(cudaGetLastError());
  // 3. G_(b,c) = Y_(b,c)^T Y_(b,c): Y_(b,c) seen column-major as [d, chunk] (lda = d); batch entry
  // (b, c) starts at (b * nvec_pad + c * chunk) * d = ((b * n_chunks) + c) * chunk * d.
  const float one = 1.0f, zero = 0.0f;
  const int di = static_cast<int>(d);
  if (split) {
    // [d, 2d] = hi (rows 0..d-1 of the [2d, chunk] column-major view) x [hi; lo]^T.
    KVCAL_CUBLAS_OK(cublasGemmStridedBatchedEx(
        blas, CUBLAS_OP_N, CUBLAS_OP_T, di, 2 * di, static_cast<int>(chunk), &one, d_shifted,
        CUDA_R_32F, 2 * di, chunk * 2 * d, d_shifted, CUDA_R_32F, 2 * di, chunk * 2 * d, &zero, d_g,
        CUDA_R_32F, di, 2 * d * d, static_cast<int>(l.n_batch * n_chunks),
        CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
  } else {
    KVCAL_CUBLAS_OK(cublasSgemmStridedBatched(blas, CUBLAS_OP_N, CUBLAS_OP_T, di, di,
                                              static_cast<int>(chunk), &one, d_shifted, di,
                                              chunk * d, d_shifted, di, chunk * d, &zero, d_g, di,
                                              d * d, static_cast<int>(l.n_batch * n_chunks)));
  }
  // 4. Chan merge in fp64.
  const double n_b = static_cast<double>(l.nvec);
  const int mgrid = grid_for(l.n_batch * d * d, 256);
  if (split)
    merge_m2_kernel<true>
        <<<mgrid, 256, 0, stream>>>(m2, mean, d_g, n_chunks, shift, d_sums, l.n_batch, d, cnt, n_b);
  else
    merge_m2_kernel<false>
        <<<mgrid, 256, 0, stream>>>(m2, mean, d_g, n_chunks, shift, d_sums, l.n_batch, d, cnt, n_b);
  mean_update_kernel<<<static_cast<unsigned>((cols + 255) / 256), 256, 0, stream>>>(
      mean, shift, d_sums, cols, cnt, n_b);
  KVCAL_CUDA_OK(cudaGetLastError());
  cnt += n_b;
}

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
  int dev = 0;
  KVCAL_CUDA_OK(cudaGetDevice(&dev));
  KVCAL_CUDA_OK(cudaDeviceGetAttribute(&m.sms, cudaDevAttrMultiProcessorCount, dev));
  const std::int64_t w = math == cov_gpu_math::tf32x3 ? 2 : 1;
  m.count.assign(static_cast<size_t>(n_slots), 0.0);
  m.mean_cur.assign(static_cast<size_t>(n_slots), 0);
  const std::int64_t max_nvec = pooled ? max_rows * n_kv : max_rows;
  m.max_pad = (max_nvec + chunk_rows - 1) / chunk_rows * chunk_rows;
  // fp16x3 chunks are >= 256 vectors.
  m.max_split_chunks = half_kernel_supports(d) ? (max_nvec + 255) / 256 : 0;
  const size_t cols = static_cast<size_t>(m.n_batch * d);
  const size_t stat_vec = static_cast<size_t>(n_slots) * cols;
  const size_t stat_mat = stat_vec * static_cast<size_t>(d);
  const size_t g_gemm = static_cast<size_t>(m.n_batch * (m.max_pad / chunk_rows) * w * d * d);
  const size_t g_split = static_cast<size_t>(m.n_batch * m.max_split_chunks * d * d);
  KVCAL_CUDA_OK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  KVCAL_CUBLAS_OK(cublasCreate(&m.blas));
  KVCAL_CUBLAS_OK(cublasSetStream(m.blas, m.stream));
  // Plain fp32 FMA math: TF32 would cost ~3 decimal digits of the covariance.
  KVCAL_CUBLAS_OK(cublasSetMathMode(m.blas, CUBLAS_PEDANTIC_MATH));
  KVCAL_CUDA_OK(cudaMalloc(&m.d_in, static_cast<size_t>(max_rows * n_kv * d) * sizeof(float)));
  KVCAL_CUDA_OK(
      cudaMalloc(&m.d_shifted, static_cast<size_t>(m.n_batch * m.max_pad * w * d) * sizeof(float)));
  KVCAL_CUDA_OK(cudaMalloc(&m.d_g, std::max(g_gemm, g_split) * sizeof(float)));
  if (m.max_split_chunks > 0) {
    const size_t n = static_cast<size_t>(m.n_batch * m.max_split_chunks * d);
    KVCAL_CUDA_OK(cudaMalloc(&m.d_inv_scale, n * sizeof(float)));
    KVCAL_CUDA_OK(cudaMalloc(&m.d_split_sums, 2 * cols * sizeof(double)));
    KVCAL_CUDA_OK(cudaMemsetAsync(m.d_split_sums, 0, 2 * cols * sizeof(double), m.stream));
  }
  KVCAL_CUDA_OK(cudaMalloc(&m.d_sums, cols * sizeof(double)));
  KVCAL_CUDA_OK(cudaMalloc(&m.d_shift, cols * sizeof(double)));
  KVCAL_CUDA_OK(cudaMalloc(&m.d_mean, 2 * stat_vec * sizeof(double)));
  KVCAL_CUDA_OK(cudaMalloc(&m.d_m2, stat_mat * sizeof(double)));
  KVCAL_CUDA_OK(cudaMemsetAsync(m.d_mean, 0, 2 * stat_vec * sizeof(double), m.stream));
  KVCAL_CUDA_OK(cudaMemsetAsync(m.d_m2, 0, stat_mat * sizeof(double), m.stream));
}

cov_accumulator_gpu::~cov_accumulator_gpu() = default;

void cov_accumulator_gpu::set_split_chunk(std::int64_t vectors) {
  impl& m = *p_;
  if (vectors <= 0) {
    m.split_chunk_override = 0;
    return;
  }
  const std::int64_t c = (vectors + split_tile_rows - 1) / split_tile_rows * split_tile_rows;
  m.split_chunk_override = std::max<std::int64_t>(256, c);
}

void cov_accumulator_gpu::add_host(const float* x, std::int64_t rows, std::int64_t slot) {
  impl& m = *p_;
  m.check_block(rows, slot);
  if (rows <= 0) return;
  KVCAL_CUDA_OK(cudaMemcpyAsync(m.d_in, x, static_cast<size_t>(rows * m.n_kv * m.d) * sizeof(float),
                                cudaMemcpyHostToDevice, m.stream));
  add_device(m.d_in, rows, slot);
  // The caller reuses x right away: wait for the copy (and the work queued behind it).
  KVCAL_CUDA_OK(cudaStreamSynchronize(m.stream));
}

void cov_accumulator_gpu::add_device(const float* d_x, std::int64_t rows, std::int64_t slot) {
  impl& m = *p_;
  m.check_block(rows, slot);
  if (rows <= 0) return;
  if (m.math == cov_gpu_math::fp16x3 && half_kernel_supports(m.d))
    m.add_split(d_x, rows, slot);
  else
    m.add_gemm(d_x, rows, slot);
}

void cov_accumulator_gpu::add_host_half(const std::uint16_t* x, std::int64_t rows,
                                        std::int64_t slot) {
  impl& m = *p_;
  m.check_block(rows, slot);
  if (rows <= 0) return;
  const size_t n = static_cast<size_t>(rows * m.n_kv * m.d);
  if (!m.d_in_half)
    KVCAL_CUDA_OK(cudaMalloc(
        &m.d_in_half, static_cast<size_t>(m.max_rows * m.n_kv * m.d) * sizeof(std::uint16_t)));
  KVCAL_CUDA_OK(
      cudaMemcpyAsync(m.d_in_half, x, n * sizeof(std::uint16_t), cudaMemcpyHostToDevice, m.stream));
  add_device_half(m.d_in_half, rows, slot);
  KVCAL_CUDA_OK(cudaStreamSynchronize(m.stream));
}

void cov_accumulator_gpu::add_device_half(const std::uint16_t* d_x, std::int64_t rows,
                                          std::int64_t slot) {
  impl& m = *p_;
  m.check_block(rows, slot);
  if (rows <= 0) return;
  const __half* x = reinterpret_cast<const __half*>(d_x);
  if (half_kernel_supports(m.d)) {
    m.add_split(x, rows, slot);
    return;
  }
  // Other head_dim: fp32 copy, then the fp32 route.
  const std::int64_t n = rows * m.n_kv * m.d;
  half_to_float_kernel<<<grid_for(n, 256), 256, 0, m.stream>>>(x, m.d_in, n);
  KVCAL_CUDA_OK(cudaGetLastError());
  m.add_gemm(m.d_in, rows, slot);
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
    KVCAL_CUDA_OK(cudaMemcpy(s.mean.data(),
                             m.mean_of(slot, m.mean_cur[static_cast<size_t>(slot)]) + b * m.d,
                             static_cast<size_t>(m.d) * sizeof(double), cudaMemcpyDeviceToHost));
    KVCAL_CUDA_OK(cudaMemcpy(s.m2.data(), m.d_m2 + (slot * cols + b * m.d) * m.d,
                             static_cast<size_t>(m.d * m.d) * sizeof(double),
                             cudaMemcpyDeviceToHost));
  }
  return out;
}

}  // namespace kvcal
