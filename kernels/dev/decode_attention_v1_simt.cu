// Development variant v1 of kernels/cuda/decode_attention.cu (not built; DESIGN.md §5 kernels/dev):
// the same split-KV GQA decode attention on CUDA cores (fp32 FMAs, 4 lanes per token for Q.K,
// lanes over channels for P.V, RoPE per token by the addition formulas). Exact to 2e-6 against
// the CPU reference but compute-bound: on an H200 at 28 q / 4 kv heads, d 128, B8 L32k it took
// 936 us (fp16) / 774 us (kivi-2), against 421 / 366 us for the first tensor-core version. It
// defines the same symbols as kernels/cuda/decode_attention.cu: swap the file in to compare.
#include "kernels/cuda/decode_attention.h"

#include <cmath>
#include <cstdint>
#include <string>

namespace kvcal {

namespace {

constexpr int kWarps = 4;      // warps per CTA, each with its own softmax state
constexpr int kTile = 32;      // tokens per warp iteration (RoPE rows are formed per tile)
constexpr int kHeadTile = 8;   // query heads per CTA

// ---- device helpers --------------------------------------------------------------------------

// NB bytes at p (aligned to min(NB, 16)) as 32-bit words; NB = 2 fills the low half of w[0].
template <int NB>
__device__ __forceinline__ void load_words(const std::uint8_t* p, unsigned* w) {
  if constexpr (NB == 2) {
    w[0] = *reinterpret_cast<const unsigned short*>(p);
  } else if constexpr (NB == 4) {
    w[0] = *reinterpret_cast<const unsigned*>(p);
  } else if constexpr (NB == 8) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    w[0] = u.x;
    w[1] = u.y;
  } else {
    static_assert(NB % 16 == 0, "load_words: 2, 4, 8 or a multiple of 16 bytes");
#pragma unroll
    for (int i = 0; i < NB / 16; ++i) {
      const uint4 u = reinterpret_cast<const uint4*>(p)[i];
      w[4 * i] = u.x;
      w[4 * i + 1] = u.y;
      w[4 * i + 2] = u.z;
      w[4 * i + 3] = u.w;
    }
  }
}

// N consecutive fp16 values at p (16-byte aligned when N >= 8) -> floats.
template <int N>
__device__ __forceinline__ void load_halves(const __half* p, float* out) {
  static_assert(N % 2 == 0, "load_halves: even count");
  unsigned w[N / 2 > 0 ? N / 2 : 1];
  load_words<N * 2>(reinterpret_cast<const std::uint8_t*>(p), w);
#pragma unroll
  for (int i = 0; i < N / 2; ++i) {
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

// Codes [first, first + N) of a packed stream, first * BITS a multiple of 8 * (bytes loaded).
template <int N, int BITS>
__device__ __forceinline__ void load_codes(const std::uint8_t* codes, int first, unsigned* c) {
  constexpr int NB = N * BITS / 8;
  unsigned w[NB / 4 > 0 ? NB / 4 : 1];
  load_words<NB>(codes + first * BITS / 8, w);
#pragma unroll
  for (int i = 0; i < N; ++i) c[i] = (w[i * BITS / 32] >> ((i * BITS) % 32)) & ((1u << BITS) - 1u);
}

// Rotates 4 (low, high) pairs of a key by the angle p0 + j (addition formulas on the table rows
// p0 and j) and adds their products with the query heads to dot[H].
template <int H, int QS>
__device__ __forceinline__ void rope_dot4(float* lo, float* hi, const float* cos0,
                                          const float* sin0, const float* cosj, const float* sinj,
                                          float inv_as, const float (*qs)[4][QS], int s, int i0,
                                          int P, float* dot) {
  const float4 c0 = __ldg(reinterpret_cast<const float4*>(cos0 + i0));
  const float4 s0 = __ldg(reinterpret_cast<const float4*>(sin0 + i0));
  const float4 c1 = __ldg(reinterpret_cast<const float4*>(cosj + i0));
  const float4 s1 = __ldg(reinterpret_cast<const float4*>(sinj + i0));
  const float ca[4] = {c0.x, c0.y, c0.z, c0.w}, sa[4] = {s0.x, s0.y, s0.z, s0.w};
  const float cb[4] = {c1.x, c1.y, c1.z, c1.w}, sb[4] = {s1.x, s1.y, s1.z, s1.w};
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const float cs = (ca[u] * cb[u] - sa[u] * sb[u]) * inv_as;
    const float sn = (sa[u] * cb[u] + ca[u] * sb[u]) * inv_as;
    const float a = lo[u], b = hi[u];
    lo[u] = a * cs - b * sn;
    hi[u] = b * cs + a * sn;
  }
#pragma unroll
  for (int h = 0; h < H; ++h) {
    const float4 ql = *reinterpret_cast<const float4*>(&qs[h][s][i0]);
    const float4 qh = *reinterpret_cast<const float4*>(&qs[h][s][P + i0]);
    dot[h] += ql.x * lo[0] + ql.y * lo[1] + ql.z * lo[2] + ql.w * lo[3] + qh.x * hi[0] +
              qh.y * hi[1] + qh.z * hi[2] + qh.w * hi[3];
  }
}

// Partial scores of token t with the H query heads over the lane's channels: pairs
// [s*P, s*P+P) of d/2 (channels c and c + d/2, the RoPE partners), keys dequantized and rotated
// 4 pairs at a time so that little stays live.
template <int D, int BITS, int GROUP, int H, int QS>
__device__ __forceinline__ void key_scores(const packed_kv_view& kv, std::int64_t slot, int t,
                                           int kc, int s, const float* cos0, const float* sin0,
                                           const float* cosj, const float* sinj, float inv_as,
                                           const float (*qs)[4][QS], float* dot) {
  constexpr int P = D / 8, HALF = D / 2;
#pragma unroll
  for (int h = 0; h < H; ++h) dot[h] = 0.0f;
  if constexpr (BITS != 16) {
    if (t < kc) {
      constexpr std::int64_t REC = 4 * D + GROUP * D * BITS / 8;
      const std::uint8_t* rec = kv.k_rec + (slot * kv.k_slot_records + t / GROUP) * REC;
      const int row = t % GROUP;
      unsigned cl[P], ch[P];
      load_codes<P, BITS>(rec + 4 * D, row * D + s * P, cl);
      load_codes<P, BITS>(rec + 4 * D, row * D + HALF + s * P, ch);
      const __half* scales = reinterpret_cast<const __half*>(rec);
      const __half* zeros = scales + D;
#pragma unroll
      for (int i0 = 0; i0 < P; i0 += 4) {
        float sl[4], sh[4], zl[4], zh[4], lo[4], hi[4];
        load_halves<4>(scales + s * P + i0, sl);
        load_halves<4>(scales + HALF + s * P + i0, sh);
        load_halves<4>(zeros + s * P + i0, zl);
        load_halves<4>(zeros + HALF + s * P + i0, zh);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          lo[u] = zl[u] + static_cast<float>(cl[i0 + u]) * sl[u];
          hi[u] = zh[u] + static_cast<float>(ch[i0 + u]) * sh[u];
        }
        rope_dot4<H, QS>(lo, hi, cos0, sin0, cosj, sinj, inv_as, qs, s, i0, P, dot);
      }
      return;
    }
  }
  const __half* row = kv.k_win + (slot * kv.win_cap + t % kv.win_cap) * D;
#pragma unroll
  for (int i0 = 0; i0 < P; i0 += 4) {
    float lo[4], hi[4];
    load_halves<4>(row + s * P + i0, lo);
    load_halves<4>(row + HALF + s * P + i0, hi);
    rope_dot4<H, QS>(lo, hi, cos0, sin0, cosj, sinj, inv_as, qs, s, i0, P, dot);
  }
}

// Value of token t for channels [lane*CPL, lane*CPL + CPL); vg = the lane's scale group, ng the
// groups per record (per-token group sizes are a run-time value: one division per thread).
template <int D, int BITS>
__device__ __forceinline__ void load_value(const packed_kv_view& kv, std::int64_t slot, int t,
                                           int vc, int lane, int vg, int ng, float* v) {
  constexpr int CPL = D / 32;
  if constexpr (BITS != 16) {
    if (t < vc) {
      const std::int64_t rec_bytes = 4 * ng + D * BITS / 8;
      const std::uint8_t* rec = kv.v_rec + (slot * kv.v_slot_records + t) * rec_bytes;
      const float sc = __half2float(reinterpret_cast<const __half*>(rec)[vg]);
      const float ze = __half2float(reinterpret_cast<const __half*>(rec)[ng + vg]);
      // The lane's CPL * BITS (<= 32) bits lie inside one aligned 32-bit word.
      const int bit = lane * CPL * BITS;
      const unsigned w = reinterpret_cast<const unsigned*>(rec + 4 * ng)[bit / 32];
#pragma unroll
      for (int i = 0; i < CPL; ++i)
        v[i] = ze + static_cast<float>((w >> (bit % 32 + i * BITS)) & ((1u << BITS) - 1u)) * sc;
      return;
    }
  }
  load_halves<CPL>(kv.v_win + (slot * kv.win_cap + t % kv.win_cap) * D + lane * CPL, v);
}

// ---- kernels -----------------------------------------------------------------------------------

// grid (splits, n_kv * head_groups, B), block 32 * kWarps.
template <int D, int BITS, int GROUP>
__global__ void __launch_bounds__(32 * kWarps)
    decode_attention_kernel(decode_attention_params p, int tiles_per_split, int n_parts) {
  constexpr int P = D / 8, HALF = D / 2, CPL = D / 32, H = kHeadTile;
  constexpr int QS = 2 * P + 4;  // padded: the 4 lanes of a token read different banks
  __shared__ __align__(16) float qs[H][4][QS];        // query, scaled by scale * log2(e)
  __shared__ __align__(16) float ps[kWarps][H][kTile];  // probabilities of the warp's tile

  const packed_kv_view& kv = p.kv;
  const int b = blockIdx.z;
  const int gq = p.n_heads / kv.n_kv, n_hg = (gq + H - 1) / H;
  const int g = static_cast<int>(blockIdx.y) / n_hg, hg = static_cast<int>(blockIdx.y) % n_hg;
  const int head0 = g * gq + hg * H, nh = min(H, gq - hg * H);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, jl = lane / 4, s = lane % 4;
  const std::int64_t slot = static_cast<std::int64_t>(b) * kv.n_kv + g;
  const int n = kv.n_tokens[b];
  const int kc = BITS == 16 ? 0 : kv.k_compressed[b];
  const int vc = BITS == 16 ? 0 : kv.v_compressed[b];
  const int vg = BITS == 16 ? 0 : lane * CPL / kv.v_group, ng = BITS == 16 ? 1 : D / kv.v_group;

  const float qscale = p.softmax_scale * 1.4426950408889634f;
  for (int i = threadIdx.x; i < H * D; i += blockDim.x) {
    const int h = i / D, c = i % D;
    const float x = h < nh ? p.q[(static_cast<std::int64_t>(b) * p.n_heads + head0 + h) * D + c] * qscale
                           : 0.0f;
    const int cc = c % HALF, sub = cc / P, at = (c >= HALF ? P : 0) + cc % P;
    qs[h][sub][at] = x;
  }
  __syncthreads();

  float m[H], l[H], acc[H][CPL];
#pragma unroll
  for (int h = 0; h < H; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
#pragma unroll
    for (int i = 0; i < CPL; ++i) acc[h][i] = 0.0f;
  }

  const int n_tiles = (n + kTile - 1) / kTile;
  const int tile_end = min(n_tiles, static_cast<int>(blockIdx.x + 1) * tiles_per_split);
  const float inv_as = 1.0f / p.rope_attention_scaling;
  for (int tile = blockIdx.x * tiles_per_split + warp; tile < tile_end; tile += kWarps) {
    const int p0 = tile * kTile;
    const float* cos0 = p.rope_cos + static_cast<std::int64_t>(p0) * HALF + s * P;
    const float* sin0 = p.rope_sin + static_cast<std::int64_t>(p0) * HALF + s * P;
    // Scores of the tile's 32 tokens, 8 per round (4 lanes per token); raw scores to smem.
#pragma unroll 1
    for (int r = 0; r < 4; ++r) {
      const int j = r * 8 + jl, t = p0 + j;
      const float* cosj = p.rope_cos + j * HALF + s * P;
      const float* sinj = p.rope_sin + j * HALF + s * P;
      float dot[H];
      key_scores<D, BITS, GROUP, H, QS>(kv, slot, t < n ? t : p0, kc, s, cos0, sin0, cosj, sinj,
                                        inv_as, qs, dot);
#pragma unroll
      for (int h = 0; h < H; ++h) {
        float x = dot[h];
        x += __shfl_xor_sync(0xffffffffu, x, 1);
        x += __shfl_xor_sync(0xffffffffu, x, 2);
        if (s == 0) ps[warp][h][j] = t < n ? x : -INFINITY;
      }
    }
    __syncwarp();
    // Online softmax over the tile (token p0 < n is always in it, so the max is finite); lane i
    // turns the score of token i into its probability.
#pragma unroll
    for (int h = 0; h < H; ++h) {
      float tmax = -INFINITY;
#pragma unroll
      for (int i = 0; i < kTile; i += 4) {
        const float4 x = *reinterpret_cast<const float4*>(&ps[warp][h][i]);
        tmax = fmaxf(tmax, fmaxf(fmaxf(x.x, x.y), fmaxf(x.z, x.w)));
      }
      const float m_new = fmaxf(m[h], tmax);
      const float alpha = exp2f(m[h] - m_new);
      const float pr = exp2f(ps[warp][h][lane] - m_new);
      l[h] = l[h] * alpha + pr;  // this lane's token; summed over the warp at the end
      m[h] = m_new;
#pragma unroll
      for (int i = 0; i < CPL; ++i) acc[h][i] *= alpha;
      __syncwarp();
      ps[warp][h][lane] = pr;
    }
    __syncwarp();
#pragma unroll 2
    for (int j4 = 0; j4 < kTile; j4 += 4) {
      float4 pr[H];
#pragma unroll
      for (int h = 0; h < H; ++h) pr[h] = *reinterpret_cast<const float4*>(&ps[warp][h][j4]);
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int t = p0 + j4 + u;
        if (t >= n) break;  // warp-uniform; beyond n the window may hold anything
        float v[CPL];
        load_value<D, BITS>(kv, slot, t, vc, lane, vg, ng, v);
#pragma unroll
        for (int h = 0; h < H; ++h) {
          const float w = u == 0 ? pr[h].x : u == 1 ? pr[h].y : u == 2 ? pr[h].z : pr[h].w;
#pragma unroll
          for (int i = 0; i < CPL; ++i) acc[h][i] += w * v[i];
        }
      }
    }
    __syncwarp();
  }

  // Partial of this warp: [B, n_heads, n_parts] x (m, l) and x d.
  const int part = blockIdx.x * kWarps + warp;
  float* ws_ml = static_cast<float*>(p.workspace);
  float* ws_acc = ws_ml + static_cast<std::int64_t>(kv.batch) * p.n_heads * n_parts * 2;
#pragma unroll
  for (int h = 0; h < H; ++h) {
    float lh = l[h];
#pragma unroll
    for (int o = 1; o < 32; o *= 2) lh += __shfl_xor_sync(0xffffffffu, lh, o);
    if (h >= nh) continue;
    const std::int64_t row =
        (static_cast<std::int64_t>(b) * p.n_heads + head0 + h) * n_parts + part;
    if (lane == 0) {
      ws_ml[2 * row] = m[h];
      ws_ml[2 * row + 1] = lh;
    }
#pragma unroll
    for (int i = 0; i < CPL; ++i) ws_acc[row * D + lane * CPL + i] = acc[h][i];
  }
}

// grid (n_heads, B), block D: log-sum-exp merge of the warps' partials.
template <int D>
__global__ void decode_attention_merge_kernel(decode_attention_params p, int n_parts) {
  const int h = blockIdx.x, b = blockIdx.y, c = threadIdx.x;
  const float* ws_ml = static_cast<const float*>(p.workspace);
  const float* ws_acc = ws_ml + static_cast<std::int64_t>(p.kv.batch) * p.n_heads * n_parts * 2;
  const std::int64_t row0 = (static_cast<std::int64_t>(b) * p.n_heads + h) * n_parts;
  float mx = -INFINITY;
  for (int i = 0; i < n_parts; ++i) mx = fmaxf(mx, ws_ml[2 * (row0 + i)]);
  float num = 0.0f, den = 0.0f;
  if (mx > -INFINITY) {
    for (int i = 0; i < n_parts; ++i) {
      const float mi = ws_ml[2 * (row0 + i)];
      if (mi == -INFINITY) continue;
      const float w = exp2f(mi - mx);
      den += w * ws_ml[2 * (row0 + i) + 1];
      num += w * ws_acc[(row0 + i) * D + c];
    }
  }
  p.out[(static_cast<std::int64_t>(b) * p.n_heads + h) * D + c] = den > 0.0f ? num / den : 0.0f;
}

// ---- host --------------------------------------------------------------------------------------

cudaError_t invalid(std::string msg) {
  set_launch_error("decode_attention: " + msg);
  return cudaErrorInvalidValue;
}

int sm_count() {
  static int n = [] {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      v = 132;
    return v > 0 ? v : 132;
  }();
  return n;
}

struct split_plan {
  int splits = 1, tiles_per_split = 1, n_parts = kWarps;
};

split_plan plan_splits(const decode_attention_params& p) {
  split_plan sp;
  const int n_kv = p.kv.n_kv > 0 ? p.kv.n_kv : 1;
  const int gq = p.n_heads / n_kv;
  const int n_hg = (gq + kHeadTile - 1) / kHeadTile;
  const int tiles = (p.max_tokens + kTile - 1) / kTile;
  const long ctas = static_cast<long>(p.kv.batch) * n_kv * (n_hg > 0 ? n_hg : 1);
  // Enough CTAs for ~4 per SM, each warp with at least one tile.
  const long want = (4L * sm_count() + ctas - 1) / (ctas > 0 ? ctas : 1);
  int tps = static_cast<int>((tiles + want - 1) / (want > 0 ? want : 1));
  if (tps < kWarps) tps = kWarps;
  sp.tiles_per_split = tps;
  sp.splits = tiles > 0 ? (tiles + tps - 1) / tps : 1;
  sp.n_parts = sp.splits * kWarps;
  return sp;
}

template <int D, int BITS, int GROUP>
cudaError_t run(const decode_attention_params& p, const split_plan& sp, cudaStream_t stream) {
  const int gq = p.n_heads / p.kv.n_kv, n_hg = (gq + kHeadTile - 1) / kHeadTile;
  decode_attention_kernel<D, BITS, GROUP>
      <<<dim3(sp.splits, p.kv.n_kv * n_hg, p.kv.batch), 32 * kWarps, 0, stream>>>(
          p, sp.tiles_per_split, sp.n_parts);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  decode_attention_merge_kernel<D><<<dim3(p.n_heads, p.kv.batch), D, 0, stream>>>(p, sp.n_parts);
  return cudaGetLastError();
}

// The one dispatch: head_dim, then bits, then group.
template <int D, int BITS>
cudaError_t dispatch_group(const decode_attention_params& p, const split_plan& sp,
                           cudaStream_t stream) {
  switch (p.kv.k_group) {
    case 32: return run<D, BITS, 32>(p, sp, stream);
    case 64: return run<D, BITS, 64>(p, sp, stream);
    case 128: return run<D, BITS, 128>(p, sp, stream);
    default:
      return invalid("K group " + std::to_string(p.kv.k_group) +
                     " is not supported (32, 64, 128)");
  }
}

template <int D>
cudaError_t dispatch_bits(const decode_attention_params& p, const split_plan& sp,
                          cudaStream_t stream) {
  switch (p.kv.k_bits) {
    case 2: return dispatch_group<D, 2>(p, sp, stream);
    case 4: return dispatch_group<D, 4>(p, sp, stream);
    case 8: return dispatch_group<D, 8>(p, sp, stream);
    case 16: return run<D, 16, 32>(p, sp, stream);
    default:
      return invalid("bits " + std::to_string(p.kv.k_bits) +
                     " is not supported (2, 4, 8; 16 = fp16)");
  }
}

bool aligned(const void* ptr, std::uintptr_t a) {
  return (reinterpret_cast<std::uintptr_t>(ptr) % a) == 0;
}

}  // namespace

std::size_t decode_attention_workspace_size(const decode_attention_params& p) {
  const split_plan sp = plan_splits(p);
  const int d = p.kv.head_dim > 0 ? p.kv.head_dim : 0;
  return static_cast<std::size_t>(p.kv.batch > 0 ? p.kv.batch : 0) *
         static_cast<std::size_t>(p.n_heads > 0 ? p.n_heads : 0) *
         static_cast<std::size_t>(sp.n_parts) * static_cast<std::size_t>(d + 2) * sizeof(float);
}

cudaError_t launch_decode_attention(const decode_attention_params& p_in, cudaStream_t stream) {
  decode_attention_params p = p_in;
  const packed_kv_view& kv = p.kv;
  const int d = kv.head_dim;
  if (kv.batch <= 0 || kv.n_kv <= 0 || p.n_heads <= 0 || p.n_heads % kv.n_kv != 0)
    return invalid("batch " + std::to_string(kv.batch) + ", " + std::to_string(p.n_heads) +
                   " query heads, " + std::to_string(kv.n_kv) +
                   " KV heads: need positive counts with query heads a multiple of KV heads");
  if (d != 64 && d != 128)
    return invalid("head_dim " + std::to_string(d) + " is not supported (64, 128)");
  if (kv.k_bits != kv.v_bits)
    return invalid("K " + std::to_string(kv.k_bits) + "-bit with V " + std::to_string(kv.v_bits) +
                   "-bit: K and V must share bits");
  if (kv.k_bits != 16 && (kv.v_group < d / 32 || kv.v_group > d || d % kv.v_group != 0))
    return invalid("V per-token group " + std::to_string(kv.v_group) + " must divide head_dim " +
                   std::to_string(d) + " and be at least " + std::to_string(d / 32));
  if (!p.q || !p.out || !p.rope_cos || !p.rope_sin || !kv.n_tokens || !kv.k_win || !kv.v_win ||
      kv.win_cap <= 0)
    return invalid("q, out, RoPE tables, n_tokens and the fp16 window (win_cap > 0) are required");
  if (kv.k_bits != 16 && (!kv.k_rec || !kv.v_rec || !kv.k_compressed || !kv.v_compressed))
    return invalid("quantized K/V need records and the k_compressed / v_compressed counters");
  if (!aligned(kv.k_rec, 16) || !aligned(kv.v_rec, 16) || !aligned(kv.k_win, 16) ||
      !aligned(kv.v_win, 16) || !aligned(p.workspace, 16))
    return invalid("records, windows and workspace must be 16-byte aligned");
  if (p.max_tokens <= 0 || p.rope_rows < p.max_tokens || p.rope_rows < kTile)
    return invalid("max_tokens " + std::to_string(p.max_tokens) + " needs RoPE rows for it (and >= " +
                   std::to_string(kTile) + "), got " + std::to_string(p.rope_rows));
  if (p.softmax_scale == 0.0f) p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(d));
  if (p.rope_attention_scaling == 0.0f) p.rope_attention_scaling = 1.0f;
  const std::size_t need = decode_attention_workspace_size(p);
  if (!p.workspace || p.workspace_bytes < need)
    return invalid("workspace of " + std::to_string(p.workspace_bytes) + " bytes, need " +
                   std::to_string(need));
  set_launch_error("");
  const split_plan sp = plan_splits(p);
  switch (d) {
    case 64: return dispatch_bits<64>(p, sp, stream);
    case 128: return dispatch_bits<128>(p, sp, stream);
    default: return invalid("head_dim " + std::to_string(d) + " is not supported (64, 128)");
  }
}

}  // namespace kvcal
