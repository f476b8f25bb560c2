#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/h2o_prompt.h"

namespace kvcal {

namespace {

using namespace cuda_dev;

constexpr int kWarps = 8;           // each warp owns 16 keys: the M rows of its mma tiles
constexpr int kKeys = 16 * kWarps;  // keys per CTA
constexpr int kQueries = 64;        // queries per shared-memory tile: 8 n-tiles of 8
constexpr float kLog2e = 1.4426950408889634f;

// c[16x8] += a[16x16] * b[16x8] with 16-bit inputs (bf16 or fp16), fp32 accumulation; the
// fragment layouts are those of mma16816 (device_util.cuh).
template <bool BF16>
__device__ __forceinline__ void mma16(float* c, const unsigned* a, unsigned b0, unsigned b1) {
  if constexpr (BF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    mma16816(c, a, b0, b1);
  }
}

__device__ __forceinline__ float fast_exp2(float x) {  // exp2(-inf) = 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Element offset of 16-byte chunk c of row r in a [rows, D] 16-bit tile: chunks XOR-swizzled
// by r % 8 so that ldmatrix's 8 rows of one chunk column hit 8 different bank groups.
template <int D>
__device__ __forceinline__ int tile_at(int r, int c) {
  return r * D + ((c ^ (r & 7)) << 3);
}

// Rows [first, first + ROWS) of a [T, D] 16-bit matrix (row stride `stride` elements) -> tile;
// rows past T are zero.
template <int D, int ROWS>
__device__ __forceinline__ void load_tile(std::uint16_t* tile, const std::uint16_t* src,
                                          std::int64_t stride, int first, int T) {
  constexpr int CH = D / 8;  // 16-byte chunks per row
  for (int i = threadIdx.x; i < ROWS * CH; i += kWarps * 32) {
    const int r = i / CH, c = i % CH;
    std::uint16_t* dst = tile + tile_at<D>(r, c);
    if (first + r < T) {
      cp_async16(reinterpret_cast<std::uint8_t*>(dst),
                 reinterpret_cast<const std::uint8_t*>(src + (first + r) * stride + c * 8));
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

// grid (B * n_kv, ceil(T / 128)): the slot fastest, so the CTAs of the first key blocks (the
// longest query ranges) start first. block 256. 128 keys a CTA: each query tile read from L2
// serves 128 keys (the traffic is B * n_heads * T^2 / 256 * 2 * d bytes).
template <int D, bool BF16>
__global__ void __launch_bounds__(kWarps * 32) h2o_prompt_kernel(h2o_prompt_params p) {
  // Two query buffers of [64, D]; first the CTA's [128, D] keys over both.
  static_assert(kKeys == 2 * kQueries, "the key tile spans the two query buffers");
  __shared__ __align__(16) std::uint16_t tiles[2 * kQueries * D];
  __shared__ float lse2[2][kQueries];  // lse * log2(e); +inf past T (probability 0)
  const int slot = blockIdx.x, b = slot / p.n_kv, g = slot % p.n_kv;
  const int j0 = blockIdx.y * kKeys, T = p.tokens, G = p.n_heads / p.n_kv;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, t4 = lane % 4;
  const auto* qbase = static_cast<const std::uint16_t*>(p.q);
  const auto* kbase = static_cast<const std::uint16_t*>(p.k);

  // The CTA's 128 keys -> the warps' A fragments (16 keys x D each), through shared memory.
  load_tile<D, kKeys>(tiles, kbase + b * p.k_stride_b + g * p.k_stride_h, p.k_stride_t, j0, T);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();
  unsigned a[D / 16][4];
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
    ldsm_x4(a[ks], reinterpret_cast<const __half*>(tiles + tile_at<D>(r, 2 * ks + (lane >> 4))));
  }
  __syncthreads();

  // Query blocks that see a key of this block: [j0, i_end).
  int i_end = T;
  if (p.window > 0 && static_cast<std::int64_t>(j0) + kKeys - 1 + p.window < i_end)
    i_end = j0 + kKeys - 1 + p.window;
  const int nq = (i_end - j0 + kQueries - 1) / kQueries, n_it = G * nq;
  const float scale2 = p.scale * kLog2e;
  auto issue = [&](int it, int buf) {
    const int h = g * G + it / nq, i0 = j0 + (it % nq) * kQueries;
    load_tile<D, kQueries>(tiles + buf * kQueries * D, qbase + b * p.q_stride_b + h * p.q_stride_h,
                           p.q_stride_t, i0, T);
    if (threadIdx.x < kQueries) {
      const int i = i0 + threadIdx.x;
      lse2[buf][threadIdx.x] =
          i < T ? p.lse[b * p.lse_stride_b + h * p.lse_stride_h + i] * kLog2e : INFINITY;
    }
    cp_async_commit();
  };
  const int j_lo = j0 + warp * 16 + gr, j_hi = j_lo + 8;  // this thread's keys (rows g, g + 8)
  float acc_lo = 0.0f, acc_hi = 0.0f;
  issue(0, 0);
  for (int it = 0; it < n_it; ++it) {
    const int buf = it & 1;
    if (it + 1 < n_it) {
      issue(it + 1, buf ^ 1);
      cp_async_wait1();
    } else {
      cp_async_wait_all();
    }
    __syncthreads();
    const int i0 = j0 + (it % nq) * kQueries;
    // Per-element masks only where a causal or window edge crosses the tile.
    const bool edge = i0 < j0 + kKeys || (p.window > 0 && i0 + kQueries - 1 - j0 >= p.window);
    const std::uint16_t* qt = tiles + buf * kQueries * D;
#pragma unroll
    for (int nt = 0; nt < kQueries / 8; ++nt) {
      float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int kp = 0; kp < D / 32; ++kp) {  // two k-steps of 16 channels per ldmatrix
        unsigned bq[4];
        ldsm_x4(bq, reinterpret_cast<const __half*>(
                        qt + tile_at<D>(nt * 8 + (lane & 7), 4 * kp + (lane >> 3))));
        mma16<BF16>(c, a[2 * kp], bq[0], bq[1]);
        mma16<BF16>(c, a[2 * kp + 1], bq[2], bq[3]);
      }
      const int q = nt * 8 + 2 * t4;  // c: (key g, query q), (g, q+1), (g+8, q), (g+8, q+1)
      const float l0 = lse2[buf][q], l1 = lse2[buf][q + 1];
      float p0 = fast_exp2(fmaf(c[0], scale2, -l0)), p1 = fast_exp2(fmaf(c[1], scale2, -l1));
      float p2 = fast_exp2(fmaf(c[2], scale2, -l0)), p3 = fast_exp2(fmaf(c[3], scale2, -l1));
      if (edge) {
        const int i = i0 + q;
        const int w = p.window > 0 ? p.window : 0x7fffffff;
        if (i < j_lo || i - j_lo >= w) p0 = 0.0f;
        if (i + 1 < j_lo || i + 1 - j_lo >= w) p1 = 0.0f;
        if (i < j_hi || i - j_hi >= w) p2 = 0.0f;
        if (i + 1 < j_hi || i + 1 - j_hi >= w) p3 = 0.0f;
      }
      acc_lo += p0 + p1;
      acc_hi += p2 + p3;
    }
    __syncthreads();  // this buffer is refilled by the next iteration's issue
  }
  // The 4 lanes of a row hold disjoint query columns: sum them in a fixed order.
  acc_lo += __shfl_xor_sync(0xffffffffu, acc_lo, 1);
  acc_hi += __shfl_xor_sync(0xffffffffu, acc_hi, 1);
  acc_lo += __shfl_xor_sync(0xffffffffu, acc_lo, 2);
  acc_hi += __shfl_xor_sync(0xffffffffu, acc_hi, 2);
  if (t4 == 0) {
    const float inv_g = 1.0f / static_cast<float>(G);
    float* out = p.score + static_cast<std::int64_t>(slot) * p.score_stride;
    if (j_lo < T) out[j_lo] = acc_lo * inv_g;
    if (j_hi < T) out[j_hi] = acc_hi * inv_g;
  }
}

template <int D, bool BF16>
void launch_typed(const h2o_prompt_params& p, cudaStream_t stream) {
  const dim3 grid(p.batch * p.n_kv, (p.tokens + kKeys - 1) / kKeys);
  h2o_prompt_kernel<D, BF16><<<grid, kWarps * 32, 0, stream>>>(p);
}

bool aligned16(const void* ptr) {
  return (reinterpret_cast<std::uintptr_t>(ptr) & 15u) == 0;
}

}  // namespace

cudaError_t launch_h2o_prompt_scores(const h2o_prompt_params& p, cudaStream_t stream) {
  auto fail = [](const std::string& msg) {
    set_launch_error("h2o_prompt_scores: " + msg);
    return cudaErrorInvalidValue;
  };
  if (p.batch <= 0 || p.n_kv <= 0 || p.n_heads <= 0 || p.n_heads % p.n_kv != 0 || p.tokens <= 0)
    return fail("batch " + std::to_string(p.batch) + ", " + std::to_string(p.n_heads) +
                " query / " + std::to_string(p.n_kv) + " KV heads, " + std::to_string(p.tokens) +
                " tokens: need positive counts and heads a multiple of KV heads");
  if (p.head_dim != 64 && p.head_dim != 128)
    return fail("head_dim " + std::to_string(p.head_dim) + " (64 or 128)");
  if (static_cast<std::int64_t>(p.batch) * p.n_kv > 2147483647LL ||
      (p.tokens + kKeys - 1) / kKeys > 65535)
    return fail(std::to_string(p.tokens) + " tokens: at most 65535 blocks of 128 keys");
  if (!p.q || !p.k || !p.lse || !p.score) return fail("q, k, lse and score are required");
  if (!aligned16(p.q) || !aligned16(p.k) || p.q_stride_t % 8 != 0 || p.q_stride_h % 8 != 0 ||
      p.q_stride_b % 8 != 0 || p.k_stride_t % 8 != 0 || p.k_stride_h % 8 != 0 ||
      p.k_stride_b % 8 != 0)
    return fail("q and k must be 16-byte aligned with strides that are multiples of 8 elements");
  if (p.score_stride < p.tokens || p.window < 0 || !(p.scale > 0.0f))
    return fail("score stride " + std::to_string(p.score_stride) + " < tokens " +
                std::to_string(p.tokens) + ", negative window or non-positive scale");
  set_launch_error("");
  if (p.head_dim == 64) {
    if (p.bf16)
      launch_typed<64, true>(p, stream);
    else
      launch_typed<64, false>(p, stream);
  } else {
    if (p.bf16)
      launch_typed<128, true>(p, stream);
    else
      launch_typed<128, false>(p, stream);
  }
  return cudaGetLastError();
}

}  // namespace kvcal
