#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/decode_attention_rd.h"
#include "kernels/cuda/device_util.cuh"

namespace kvcal {

namespace {

using namespace cuda_dev;

constexpr int kWarps = 4;      // warps per CTA, each with its own softmax state
constexpr int kTile = 32;      // tokens per warp iteration (RoPE rows are formed per tile)
constexpr int kHeadTile = 16;  // query heads per CTA: the 16 rows of the mma tile

// Layout of the in-tile RoPE rows in smem: pair c of row j at j * RROW + (c / P) * SB + c % P.
// The skew makes the 16-byte reads of a quarter warp (2 tokens x 4 lanes) hit 8 different bank
// groups (P = d / 8 pairs per lane).
template <int D>
struct rot_layout {
  static constexpr int P = D / 8;
  static constexpr int SB = P == 16 ? 24 : 12;
  static constexpr int RROW = P == 16 ? 4 * SB + 4 : 4 * SB;
  static __device__ __forceinline__ int at(int j, int c) { return j * RROW + (c / P) * SB + c % P; }
};

// Writes key t (rotated by its in-tile angle j f, fp16) to row j of the warp's tile in smem:
// lane s of the token handles pairs [s*P, s*P+P) (channels c and c + d/2), 8 pairs at a time
// (16-byte loads and conflict-free 16-byte stores). rot: the row j of the skewed RoPE rows.
template <int D, int BITS, int GROUP>
__device__ __forceinline__ void key_to_smem(const packed_kv_view& kv, std::int64_t slot, int t,
                                            bool valid, int kc, int s, const float* rcos,
                                            const float* rsin, __half* row_out) {
  constexpr int P = D / 8, HALF = D / 2, SB = rot_layout<D>::SB;
  // The lane's packed codes stay packed (P * BITS bits per half) until used.
  constexpr int CB = BITS == 16 ? 4 : P * BITS / 8, NW = CB / 4 > 0 ? CB / 4 : 1;
  bool quant = false;
  const std::uint8_t* rec = nullptr;
  unsigned wl[NW], wh[NW];
  if constexpr (BITS != 16) {
    if (valid && t < kc) {
      constexpr std::int64_t REC = 4 * D + GROUP * D * BITS / 8;
      rec = kv.k_rec + (slot * kv.k_slot_records + t / GROUP) * REC;
      const int row = t % GROUP;
      load_words<CB>(rec + 4 * D + (row * D + s * P) * BITS / 8, wl);
      load_words<CB>(rec + 4 * D + (row * D + HALF + s * P) * BITS / 8, wh);
      quant = true;
    }
  }
  const __half* src = kv.k_win + (slot * kv.win_cap + t % kv.win_cap) * D;
#pragma unroll
  for (int i0 = 0; i0 < P; i0 += 8) {
    float lo[8], hi[8];
    if (!valid) {
#pragma unroll
      for (int u = 0; u < 8; ++u) lo[u] = hi[u] = 0.0f;
    } else if (quant) {
      const __half* scales = reinterpret_cast<const __half*>(rec);
      const __half* zeros = scales + D;
      float sl[8], sh[8], zl[8], zh[8];
      load_halves<8>(scales + s * P + i0, sl);
      load_halves<8>(scales + HALF + s * P + i0, sh);
      load_halves<8>(zeros + s * P + i0, zl);
      load_halves<8>(zeros + HALF + s * P + i0, zh);
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        constexpr unsigned mask = BITS == 16 ? 0u : (1u << BITS) - 1u;
        const int bit = (i0 + u) * BITS;
        lo[u] = zl[u] + static_cast<float>((wl[bit / 32] >> (bit % 32)) & mask) * sl[u];
        hi[u] = zh[u] + static_cast<float>((wh[bit / 32] >> (bit % 32)) & mask) * sh[u];
      }
    } else {
      load_halves<8>(src + s * P + i0, lo);
      load_halves<8>(src + HALF + s * P + i0, hi);
    }
    float rl[8], rh[8];
#pragma unroll
    for (int u4 = 0; u4 < 8; u4 += 4) {
      const float4 c = *reinterpret_cast<const float4*>(rcos + s * SB + i0 + u4);
      const float4 sn = *reinterpret_cast<const float4*>(rsin + s * SB + i0 + u4);
      const float cc[4] = {c.x, c.y, c.z, c.w}, ss[4] = {sn.x, sn.y, sn.z, sn.w};
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        rl[u4 + u] = lo[u4 + u] * cc[u] - hi[u4 + u] * ss[u];
        rh[u4 + u] = hi[u4 + u] * cc[u] + lo[u4 + u] * ss[u];
      }
    }
    *reinterpret_cast<uint4*>(row_out + s * P + i0) =
        make_uint4(pack_half2(rl[0], rl[1]), pack_half2(rl[2], rl[3]), pack_half2(rl[4], rl[5]),
                   pack_half2(rl[6], rl[7]));
    *reinterpret_cast<uint4*>(row_out + HALF + s * P + i0) =
        make_uint4(pack_half2(rh[0], rh[1]), pack_half2(rh[2], rh[3]), pack_half2(rh[4], rh[5]),
                   pack_half2(rh[6], rh[7]));
  }
}

// Chunk k (8 channels) of lane s for values: chunks 2s, 2s+1, 2s+8, 2s+9 (d = 128) or 2s, 2s+1
// (d = 64), so that the 16-byte stores of a quarter warp land in 8 different bank groups.
__device__ __forceinline__ int value_chunk(int s, int k) {
  return 2 * s + (k & 1) + (k >> 1) * 8;
}

// Writes value t (fp16) to row j of the warp's tile, the lane's chunks of 8 channels
// (vgi[k] = scale group of chunk k, ng groups per record).
template <int D, int BITS>
__device__ __forceinline__ void value_to_smem(const packed_kv_view& kv, std::int64_t slot, int t,
                                              bool valid, int vc, int s, const int* vgi, int ng,
                                              __half* row_out) {
  constexpr int NCH = D / 32;
  if (!valid) {
#pragma unroll
    for (int k = 0; k < NCH; ++k)
      *reinterpret_cast<uint4*>(row_out + 8 * value_chunk(s, k)) = make_uint4(0u, 0u, 0u, 0u);
    return;
  }
  if constexpr (BITS != 16) {
    if (t < vc) {
      const std::int64_t rec_bytes = 4 * ng + D * BITS / 8;
      const std::uint8_t* rec = kv.v_rec + (slot * kv.v_slot_records + t) * rec_bytes;
      const __half* hs = reinterpret_cast<const __half*>(rec);
      const std::uint8_t* codes = rec + 4 * ng;
      float sc = 0.0f, ze = 0.0f;
#pragma unroll
      for (int k = 0; k < NCH; ++k) {
        const int c0 = 8 * value_chunk(s, k);
        if (k == 0 || vgi[k] != vgi[k - 1]) {
          sc = __half2float(__ldg(hs + vgi[k]));
          ze = __half2float(__ldg(hs + ng + vgi[k]));
        }
        unsigned w[BITS >= 8 ? 2 : 1];  // 8 codes = BITS bytes
        load_words4<BITS>(codes + c0 * BITS / 8, w);
        float x[8];
#pragma unroll
        for (int u = 0; u < 8; ++u)
          x[u] = ze +
                 static_cast<float>((w[u * BITS / 32] >> ((u * BITS) % 32)) & ((1u << BITS) - 1u)) *
                     sc;
        *reinterpret_cast<uint4*>(row_out + c0) =
            make_uint4(pack_half2(x[0], x[1]), pack_half2(x[2], x[3]), pack_half2(x[4], x[5]),
                       pack_half2(x[6], x[7]));
      }
      return;
    }
  }
  const __half* src = kv.v_win + (slot * kv.win_cap + t % kv.win_cap) * D;
#pragma unroll
  for (int k = 0; k < NCH; ++k) {
    const int c0 = 8 * value_chunk(s, k);
    *reinterpret_cast<uint4*>(row_out + c0) = __ldg(reinterpret_cast<const uint4*>(src + c0));
  }
}

// ---- fp16-arithmetic dequantization (decode_attention_params::half_dequant) -------------------
// Codes become fp16 through the 1024 + code bit pattern (0x6400 | code, exact), then
// x = (h - 1024) * scale + zero in one HFMA2 per 2 channels, and the in-tile rotation runs in
// half2 too: no I2F, no fp16 -> fp32 conversion of scales, half the FMAs.

template <int D, int BITS, int GROUP>
__device__ __forceinline__ void key_to_smem_h2(const packed_kv_view& kv, std::int64_t slot, int t,
                                               bool valid, int kc, int s, const float* rcos,
                                               const float* rsin, __half* row_out) {
  constexpr int P = D / 8, HALF = D / 2, SB = rot_layout<D>::SB;
  constexpr int CB = BITS == 16 ? 4 : P * BITS / 8, NW = CB / 4 > 0 ? CB / 4 : 1;
  bool quant = false;
  const std::uint8_t* rec = nullptr;
  unsigned wl[NW], wh[NW];
  if constexpr (BITS != 16) {
    if (valid && t < kc) {
      constexpr std::int64_t REC = 4 * D + GROUP * D * BITS / 8;
      rec = kv.k_rec + (slot * kv.k_slot_records + t / GROUP) * REC;
      const int row = t % GROUP;
      load_words<CB>(rec + 4 * D + (row * D + s * P) * BITS / 8, wl);
      load_words<CB>(rec + 4 * D + (row * D + HALF + s * P) * BITS / 8, wh);
      quant = true;
    }
  }
  const __half* src = kv.k_win + (slot * kv.win_cap + t % kv.win_cap) * D;
#pragma unroll
  for (int i0 = 0; i0 < P; i0 += 8) {
    __half2 lo[4], hi[4];
    if (!valid) {
#pragma unroll
      for (int u = 0; u < 4; ++u) lo[u] = hi[u] = __float2half2_rn(0.0f);
    } else if (quant) {
      const __half* scales = reinterpret_cast<const __half*>(rec);
      const __half* zeros = scales + D;
      const uint4 sl = __ldg(reinterpret_cast<const uint4*>(scales + s * P + i0));
      const uint4 sh = __ldg(reinterpret_cast<const uint4*>(scales + HALF + s * P + i0));
      const uint4 zl = __ldg(reinterpret_cast<const uint4*>(zeros + s * P + i0));
      const uint4 zh = __ldg(reinterpret_cast<const uint4*>(zeros + HALF + s * P + i0));
      const unsigned slw[4] = {sl.x, sl.y, sl.z, sl.w}, shw[4] = {sh.x, sh.y, sh.z, sh.w};
      const unsigned zlw[4] = {zl.x, zl.y, zl.z, zl.w}, zhw[4] = {zh.x, zh.y, zh.z, zh.w};
      // The chunk's 8 codes: bits [i0 * BITS, (i0 + 8) * BITS) of the lane's words.
      unsigned cl[BITS == 8 ? 2 : 1], ch[BITS == 8 ? 2 : 1];
      if constexpr (BITS == 8) {
        cl[0] = wl[i0 / 4];
        cl[1] = wl[i0 / 4 + 1];
        ch[0] = wh[i0 / 4];
        ch[1] = wh[i0 / 4 + 1];
      } else if constexpr (BITS != 16) {
        cl[0] = wl[i0 * BITS / 32] >> ((i0 * BITS) % 32);
        ch[0] = wh[i0 * BITS / 32] >> ((i0 * BITS) % 32);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if constexpr (BITS != 16) {
          lo[u] = __hfma2(code_pair<BITS>(cl, u), as_h2(slw[u]), as_h2(zlw[u]));
          hi[u] = __hfma2(code_pair<BITS>(ch, u), as_h2(shw[u]), as_h2(zhw[u]));
        }
      }
    } else {
      const uint4 a = __ldg(reinterpret_cast<const uint4*>(src + s * P + i0));
      const uint4 c = __ldg(reinterpret_cast<const uint4*>(src + HALF + s * P + i0));
      lo[0] = as_h2(a.x), lo[1] = as_h2(a.y), lo[2] = as_h2(a.z), lo[3] = as_h2(a.w);
      hi[0] = as_h2(c.x), hi[1] = as_h2(c.y), hi[2] = as_h2(c.z), hi[3] = as_h2(c.w);
    }
    unsigned rl[4], rh[4];
#pragma unroll
    for (int u4 = 0; u4 < 8; u4 += 4) {
      const float4 c = *reinterpret_cast<const float4*>(rcos + s * SB + i0 + u4);
      const float4 sn = *reinterpret_cast<const float4*>(rsin + s * SB + i0 + u4);
      const __half2 c01 = __floats2half2_rn(c.x, c.y), c23 = __floats2half2_rn(c.z, c.w);
      const __half2 s01 = __floats2half2_rn(sn.x, sn.y), s23 = __floats2half2_rn(sn.z, sn.w);
#pragma unroll
      for (int v = 0; v < 2; ++v) {
        const int u = u4 / 2 + v;
        const __half2 cc = v == 0 ? c01 : c23, ss = v == 0 ? s01 : s23;
        rl[u] = h2_bits(__hfma2(lo[u], cc, __hneg2(__hmul2(hi[u], ss))));
        rh[u] = h2_bits(__hfma2(hi[u], cc, __hmul2(lo[u], ss)));
      }
    }
    *reinterpret_cast<uint4*>(row_out + s * P + i0) = make_uint4(rl[0], rl[1], rl[2], rl[3]);
    *reinterpret_cast<uint4*>(row_out + HALF + s * P + i0) = make_uint4(rh[0], rh[1], rh[2], rh[3]);
  }
}

template <int D, int BITS>
__device__ __forceinline__ void value_to_smem_h2(const packed_kv_view& kv, std::int64_t slot, int t,
                                                 bool valid, int vc, int s, const int* vgi, int ng,
                                                 __half* row_out) {
  constexpr int NCH = D / 32;
  if constexpr (BITS != 16) {
    if (valid && t < vc) {
      const std::int64_t rec_bytes = 4 * ng + D * BITS / 8;
      const std::uint8_t* rec = kv.v_rec + (slot * kv.v_slot_records + t) * rec_bytes;
      const __half* hs = reinterpret_cast<const __half*>(rec);
      const std::uint8_t* codes = rec + 4 * ng;
      __half2 sc = __float2half2_rn(0.0f), ze = sc;
#pragma unroll
      for (int k = 0; k < NCH; ++k) {
        const int c0 = 8 * value_chunk(s, k);
        if (k == 0 || vgi[k] != vgi[k - 1]) {
          sc = __half2half2(__ldg(hs + vgi[k]));
          ze = __half2half2(__ldg(hs + ng + vgi[k]));
        }
        unsigned w[BITS >= 8 ? 2 : 1];  // 8 codes = BITS bytes
        load_words4<BITS>(codes + c0 * BITS / 8, w);
        unsigned x[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) x[u] = h2_bits(__hfma2(code_pair<BITS>(w, u), sc, ze));
        *reinterpret_cast<uint4*>(row_out + c0) = make_uint4(x[0], x[1], x[2], x[3]);
      }
      return;
    }
  }
  value_to_smem<D, BITS>(kv, slot, t, valid, vc, s, vgi, ng, row_out);  // fp16 window / padding
}

// ---- software-pipelined staging (decode_attention_params::pipelined) ---------------------------
// Each warp copies the raw packed bytes of its next K half-tile / V half-tile (the K record's
// scales, zeros and the tile's 32 code rows; the V records of the tile's tokens) into a per-warp
// shared-memory buffer with cp.async while it dequantizes + computes the current one from the
// other buffer (stages K0, V0, K1, V1, ...; two buffers, one group in flight). The dequantization
// then reads shared memory; its arithmetic is that of key_to_smem_h2 / value_to_smem_h2.

// Stage layouts. K: fp16 scales [D], fp16 zeros [D], codes of rows 0..31 of the tile (the tile
// lies in one record: 32-token tiles, k_group a multiple of 32, k_compressed a multiple of it).
// V: the records of the tile's tokens p0 .. min(p0 + 32, vc) - 1, back to back.
template <int D, int BITS>
struct stage_plan {
  static constexpr int k_bytes = 4 * D + kTile * D * BITS / 8;
  static constexpr __host__ __device__ int v_rec_bytes(int ng) { return 4 * ng + D * BITS / 8; }
  // Bytes of one buffer, 16-aligned: the larger of the K and V stages.
  static constexpr __host__ __device__ int bytes(int ng) {
    const int v = kTile * v_rec_bytes(ng);
    return ((v > k_bytes ? v : k_bytes) + 15) / 16 * 16;
  }
};

// Issues the K stage of the tile at p0 (nothing when its keys are in the window) and commits a
// group (possibly empty, to keep the wait_group count uniform).
template <int D, int BITS, int GROUP>
__device__ __forceinline__ void issue_k_stage(const packed_kv_view& kv, std::int64_t slot, int p0,
                                              bool has, int kc, std::uint8_t* buf, int lane) {
  if (has && p0 < kc) {
    constexpr std::int64_t REC = 4 * D + GROUP * D * BITS / 8;
    const std::uint8_t* rec = kv.k_rec + (slot * kv.k_slot_records + p0 / GROUP) * REC;
    warp_copy_async(buf, rec, 4 * D, lane);
    warp_copy_async(buf + 4 * D, rec + 4 * D + (p0 % GROUP) * D * BITS / 8, kTile * D * BITS / 8,
                    lane);
  }
  cp_async_commit();
}

template <int D, int BITS>
__device__ __forceinline__ void issue_v_stage(const packed_kv_view& kv, std::int64_t slot, int p0,
                                              bool has, int vc, int ng, std::uint8_t* buf,
                                              int lane) {
  const int nv = has ? min(kTile, vc - p0) : 0;
  if (nv > 0) {
    const std::int64_t rb = stage_plan<D, BITS>::v_rec_bytes(ng);
    warp_copy_async(buf, kv.v_rec + (slot * kv.v_slot_records + p0) * rb, nv * static_cast<int>(rb),
                    lane);
  }
  cp_async_commit();
}

// key_to_smem_h2 with the record read from the K stage st (row j of the tile) and the RoPE rows
// as fp16 (rcos / rsin: row j, the halves key_to_smem_h2 forms with __floats2half2_rn).
template <int D, int BITS>
__device__ __forceinline__ void key_to_smem_staged(const packed_kv_view& kv, std::int64_t slot,
                                                   int t, bool valid, bool quant,
                                                   const std::uint8_t* st, int j, int s,
                                                   const __half* rcos, const __half* rsin,
                                                   __half* row_out) {
  constexpr int P = D / 8, HALF = D / 2, SB = rot_layout<D>::SB;
  constexpr int CB = P * BITS / 8, NW = CB / 4 > 0 ? CB / 4 : 1;
  unsigned wl[NW], wh[NW];
  if (quant) {
    load_words_smem<CB>(st + 4 * D + (j * D + s * P) * BITS / 8, wl);
    load_words_smem<CB>(st + 4 * D + (j * D + HALF + s * P) * BITS / 8, wh);
  }
  const __half* src = kv.k_win + (slot * kv.win_cap + t % kv.win_cap) * D;
#pragma unroll
  for (int i0 = 0; i0 < P; i0 += 8) {
    __half2 lo[4], hi[4];
    if (!valid) {
#pragma unroll
      for (int u = 0; u < 4; ++u) lo[u] = hi[u] = __float2half2_rn(0.0f);
    } else if (quant) {
      const __half* scales = reinterpret_cast<const __half*>(st);
      const __half* zeros = scales + D;
      const uint4 sl = *reinterpret_cast<const uint4*>(scales + s * P + i0);
      const uint4 sh = *reinterpret_cast<const uint4*>(scales + HALF + s * P + i0);
      const uint4 zl = *reinterpret_cast<const uint4*>(zeros + s * P + i0);
      const uint4 zh = *reinterpret_cast<const uint4*>(zeros + HALF + s * P + i0);
      const unsigned slw[4] = {sl.x, sl.y, sl.z, sl.w}, shw[4] = {sh.x, sh.y, sh.z, sh.w};
      const unsigned zlw[4] = {zl.x, zl.y, zl.z, zl.w}, zhw[4] = {zh.x, zh.y, zh.z, zh.w};
      unsigned cl[BITS == 8 ? 2 : 1], ch[BITS == 8 ? 2 : 1];
      if constexpr (BITS == 8) {
        cl[0] = wl[i0 / 4];
        cl[1] = wl[i0 / 4 + 1];
        ch[0] = wh[i0 / 4];
        ch[1] = wh[i0 / 4 + 1];
      } else {
        cl[0] = wl[i0 * BITS / 32] >> ((i0 * BITS) % 32);
        ch[0] = wh[i0 * BITS / 32] >> ((i0 * BITS) % 32);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        lo[u] = __hfma2(code_pair<BITS>(cl, u), as_h2(slw[u]), as_h2(zlw[u]));
        hi[u] = __hfma2(code_pair<BITS>(ch, u), as_h2(shw[u]), as_h2(zhw[u]));
      }
    } else {
      const uint4 a = __ldg(reinterpret_cast<const uint4*>(src + s * P + i0));
      const uint4 c = __ldg(reinterpret_cast<const uint4*>(src + HALF + s * P + i0));
      lo[0] = as_h2(a.x), lo[1] = as_h2(a.y), lo[2] = as_h2(a.z), lo[3] = as_h2(a.w);
      hi[0] = as_h2(c.x), hi[1] = as_h2(c.y), hi[2] = as_h2(c.z), hi[3] = as_h2(c.w);
    }
    unsigned rl[4], rh[4];
#pragma unroll
    for (int u4 = 0; u4 < 8; u4 += 4) {
      const uint2 c = *reinterpret_cast<const uint2*>(rcos + s * SB + i0 + u4);
      const uint2 sn = *reinterpret_cast<const uint2*>(rsin + s * SB + i0 + u4);
#pragma unroll
      for (int v = 0; v < 2; ++v) {
        const int u = u4 / 2 + v;
        const __half2 cc = as_h2(v == 0 ? c.x : c.y), ss = as_h2(v == 0 ? sn.x : sn.y);
        rl[u] = h2_bits(__hfma2(lo[u], cc, __hneg2(__hmul2(hi[u], ss))));
        rh[u] = h2_bits(__hfma2(hi[u], cc, __hmul2(lo[u], ss)));
      }
    }
    *reinterpret_cast<uint4*>(row_out + s * P + i0) = make_uint4(rl[0], rl[1], rl[2], rl[3]);
    *reinterpret_cast<uint4*>(row_out + HALF + s * P + i0) = make_uint4(rh[0], rh[1], rh[2], rh[3]);
  }
}

// value_to_smem_h2 for a record in the V stage (rec: its first byte in shared memory), or the
// fp16 window row / zeros (rec == nullptr).
template <int D, int BITS>
__device__ __forceinline__ void value_to_smem_staged(const packed_kv_view& kv, std::int64_t slot,
                                                     int t, bool valid, const std::uint8_t* rec,
                                                     int s, const int* vgi, int ng,
                                                     __half* row_out) {
  constexpr int NCH = D / 32;
  if (valid && rec != nullptr) {
    const __half* hs = reinterpret_cast<const __half*>(rec);
    const std::uint8_t* codes = rec + 4 * ng;
    __half2 sc = __float2half2_rn(0.0f), ze = sc;
#pragma unroll
    for (int k = 0; k < NCH; ++k) {
      const int c0 = 8 * value_chunk(s, k);
      if (k == 0 || vgi[k] != vgi[k - 1]) {
        sc = __half2half2(hs[vgi[k]]);
        ze = __half2half2(hs[ng + vgi[k]]);
      }
      unsigned w[BITS >= 8 ? 2 : 1];  // 8 codes = BITS bytes, 4-byte aligned (2 for 2 bits)
      if constexpr (BITS == 2) {
        w[0] = *reinterpret_cast<const unsigned short*>(codes + c0 * BITS / 8);
      } else {
#pragma unroll
        for (int i = 0; i < BITS / 4; ++i)
          w[i] = reinterpret_cast<const unsigned*>(codes + c0 * BITS / 8)[i];
      }
      unsigned x[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) x[u] = h2_bits(__hfma2(code_pair<BITS>(w, u), sc, ze));
      *reinterpret_cast<uint4*>(row_out + c0) = make_uint4(x[0], x[1], x[2], x[3]);
    }
    return;
  }
  const __half* src = kv.v_win + (slot * kv.win_cap + t % kv.win_cap) * D;
#pragma unroll
  for (int k = 0; k < NCH; ++k) {
    const int c0 = 8 * value_chunk(s, k);
    *reinterpret_cast<uint4*>(row_out + c0) =
        valid ? __ldg(reinterpret_cast<const uint4*>(src + c0)) : make_uint4(0u, 0u, 0u, 0u);
  }
}

template <int D>
struct smem_plan {
  static constexpr int ROW = D + 8;   // halves per K/V tile row: +16 B keeps ldmatrix conflict-free
  static constexpr int QROW = D + 8;  // floats per query row (+8: 2-way, the minimum)
  static constexpr int RROW = rot_layout<D>::RROW;          // floats per (skewed) RoPE row
  static constexpr std::size_t q_floats = 16 * QROW;        // [16][QROW] scaled queries
  static constexpr std::size_t rot_floats = 2 * 32 * RROW;  // cos, sin [32][RROW]: rows 0..31
  static constexpr std::size_t bytes =
      (q_floats + rot_floats) * 4 + static_cast<std::size_t>(kWarps) * 32 * ROW * 2;
  // Pipelined variant: RoPE rows as fp16, then kWarps x 2 stage buffers of stage_plan::bytes.
  static constexpr std::size_t pl_base =
      q_floats * 4 + rot_floats * 2 + static_cast<std::size_t>(kWarps) * 32 * ROW * 2;
  static constexpr std::size_t pl_bytes(int stage) {
    return pl_base + static_cast<std::size_t>(kWarps) * 2 * static_cast<std::size_t>(stage);
  }
};

// ---- V latent mode (packed_kv_view::v_latent_rank) ---------------------------------------------
// A V tile row of the compressed range is the token's latent z [VR] (fp16), so O += P Z runs on
// VR / 8 mma n-tiles instead of D / 8; each CTA projects its partial once at the end:
// acc = dec_w (P Z) + (sum P) dec_b (DESIGN.md §3.2), then writes an ordinary partial.

// Writes latent z of token t (fp16) to columns [0, VR) of a tile row: lane s of the token the
// VR / 4 channels [s VR / 4, (s + 1) VR / 4). 8 / 4-bit codes become fp16 through the 0x6400
// pattern and z = code * scale + zero in one HFMA2 per 2 channels (the half_dequant arithmetic).
template <int VR>
__device__ __forceinline__ void latent_to_smem(const packed_kv_view& kv, std::int64_t slot, int t,
                                               bool valid, int s, __half* row_out) {
  constexpr int PER = VR / 4;  // channels per lane: 4, 8, 16
  unsigned x[PER / 2];
  if (!valid) {
#pragma unroll
    for (int u = 0; u < PER / 2; ++u) x[u] = 0u;
  } else {
    const int bits = kv.v_latent_bits;
    const std::int64_t rb = static_cast<std::int64_t>(latent_record_bytes_of(VR, bits));
    const std::uint8_t* rec = kv.v_rec + (slot * kv.v_slot_records + t) * rb;
    if (bits == 16) {
      load_words4<PER * 2>(rec + 2 * s * PER, x);  // records of 2 VR bytes: 8-byte aligned
    } else {
      const __half2 sc = __half2half2(__ldg(reinterpret_cast<const __half*>(rec)));
      const __half2 ze = __half2half2(__ldg(reinterpret_cast<const __half*>(rec) + 1));
      if (bits == 8) {
        unsigned w[PER / 4];
        load_words4<PER>(rec + 4 + s * PER, w);  // records of 4 + VR bytes: 4-byte aligned
#pragma unroll
        for (int u = 0; u < PER / 2; ++u) x[u] = h2_bits(__hfma2(code_pair<8>(w, u), sc, ze));
      } else {
        unsigned w[PER / 8 > 0 ? PER / 8 : 1];
        load_words4<PER / 2>(rec + 4 + s * PER / 2, w);  // 2 bytes at VR 16: 2-byte aligned
#pragma unroll
        for (int u = 0; u < PER / 2; ++u)
          x[u] = h2_bits(__hfma2(code_pair<4>(w + u / 4, u % 4), sc, ze));
      }
    }
  }
  if constexpr (PER == 4) {
    *reinterpret_cast<uint2*>(row_out + s * PER) = make_uint2(x[0], x[1]);
  } else {
#pragma unroll
    for (int i = 0; i < PER / 8; ++i)
      *reinterpret_cast<uint4*>(row_out + s * PER + 8 * i) =
          make_uint4(x[4 * i], x[4 * i + 1], x[4 * i + 2], x[4 * i + 3]);
  }
}

// The end of a latent CTA: merges the warps' latent states (red_o [kWarps][16][D], first VR
// columns; red_ml [kWarps][16][2]) into zs [16][VR] + stats [16][2] (scratch: the free RoPE
// rows), then writes acc = dec_w[g] zs + den dec_b[g] (fp32) as the CTA's partial.
template <int D, int VR>
__device__ __forceinline__ void latent_partial_out(const decode_attention_params& p,
                                                   const float* red_o, const float* red_ml,
                                                   float* scratch, int nh, int b, int g, int head0,
                                                   int part, int n_parts) {
  constexpr int H = kHeadTile;
  float* zs = scratch;              // [16][VR]
  float* stats = scratch + H * VR;  // [16][2] (max, den)
  for (int i = threadIdx.x; i < nh * VR; i += blockDim.x) {
    const int h = i / VR, c = i % VR;
    float num, den;
    const float mx = merge_warp_partials<kWarps, H>(red_o, red_ml, D, h, c, num, den);
    zs[h * VR + c] = num;
    if (c == 0) {
      stats[2 * h] = mx;
      stats[2 * h + 1] = den;
    }
  }
  __syncthreads();
  float* ws_ml = static_cast<float*>(p.workspace);
  float* ws_acc = ws_ml + static_cast<std::int64_t>(p.kv.batch) * p.n_heads * n_parts * 2;
  const float* dw = p.kv.v_dec_w + static_cast<std::int64_t>(g) * D * VR;  // [D, VR]
  const float* db = p.kv.v_dec_b + static_cast<std::int64_t>(g) * D;
  for (int i = threadIdx.x; i < nh * D; i += blockDim.x) {
    const int h = i / D, c = i % D;
    const float den = stats[2 * h + 1];
    float acc = den * __ldg(db + c);
#pragma unroll
    for (int r4 = 0; r4 < VR; r4 += 4) {
      const float4 w = __ldg(reinterpret_cast<const float4*>(dw + c * VR + r4));
      acc += w.x * zs[h * VR + r4] + w.y * zs[h * VR + r4 + 1] + w.z * zs[h * VR + r4 + 2] +
             w.w * zs[h * VR + r4 + 3];
    }
    const std::int64_t row =
        (static_cast<std::int64_t>(b) * p.n_heads + head0 + h) * n_parts + part;
    ws_acc[row * D + c] = acc;
    if (c == 0) {
      ws_ml[2 * row] = stats[2 * h];
      ws_ml[2 * row + 1] = den;
    }
  }
}

// ---- kernels -----------------------------------------------------------------------------------

// grid (splits, n_kv * head_groups, B), block 32 * kWarps, dynamic smem smem_plan<D>::bytes.
// Per tile of 32 tokens a warp: dequantizes + rotates (in-tile angle) K into smem as fp16,
// rotates the queries by the tile's base angle into mma A fragments, S = Q K^T on tensor cores
// (16 query-head rows x 32 tokens), online softmax on the S fragments, dequantizes V into the
// same smem, O += P V on tensor cores.
#ifndef KVCAL_DA_MIN_BLOCKS
#define KVCAL_DA_MIN_BLOCKS 3  // CTAs per SM the compiler budgets registers for
#endif
// PL (pipelined, with HM and BITS != 16): K / V records staged by cp.async one half-tile ahead.
// VR (V mode): 0 = every token, V as KIVI records / fp16 window; > 0 = the V latent mode's
// compressed range [0, min(n, v_compressed)), V tile rows are latents z (VR wide) and the CTA's
// partial is projected through dec_w at the end (latent_partial_out); -1 = the latent mode's
// window range [v_compressed, n), fp16 V, its partials after the latent ones (n_parts - gridDim.x
// onwards).
template <int D, int BITS, int GROUP, bool HM, bool PL, int VR = 0>
__global__ void __launch_bounds__(32 * kWarps, KVCAL_DA_MIN_BLOCKS)
    decode_attention_kernel(decode_attention_params p, int tiles_per_split, int n_parts) {
  using SP = smem_plan<D>;
  constexpr int HALF = D / 2, ROW = SP::ROW, NKS = D / 16, NNT = D / 8, H = kHeadTile;
  constexpr int VNT = VR > 0 ? VR / 8 : NNT;  // mma n-tiles of a V tile row
  static_assert(VR <= 0 || (VR % 16 == 0 && VR <= D && !PL && HM), "latent V: rank, HM only");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* qs = reinterpret_cast<float*>(smem_raw);  // [16][QROW]
  float* rcos = qs + SP::q_floats;                 // [32][RROW]
  float* rsin = rcos + 32 * SP::RROW;
  // PL: the RoPE rows as fp16 (the halves the HM path forms), [32][RROW] each.
  __half* rcos_h = reinterpret_cast<__half*>(rcos);
  __half* rsin_h = rcos_h + 32 * SP::RROW;
  __half* tiles = PL ? rsin_h + 32 * SP::RROW
                     : reinterpret_cast<__half*>(rsin + 32 * SP::RROW);  // [kWarps][32][ROW]

  const packed_kv_view& kv = p.kv;
  const int b = blockIdx.z;
  const int gq = p.n_heads / kv.n_kv, n_hg = (gq + H - 1) / H;
  const int g = static_cast<int>(blockIdx.y) / n_hg, hg = static_cast<int>(blockIdx.y) % n_hg;
  const int head0 = g * gq + hg * H, nh = min(H, gq - hg * H);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, jl = lane / 4, s = lane % 4;
  const int r0 = lane / 4, cq = (lane % 4) * 2;
  const std::int64_t slot = static_cast<std::int64_t>(b) * kv.n_kv + g;
  const int n = kv.n_tokens[b];
  const int kc = BITS == 16 ? 0 : kv.k_compressed[b];
  const int vc = BITS == 16 && VR == 0 ? 0 : kv.v_compressed[b];
  const int ng = BITS == 16 || VR != 0 ? 1 : D / kv.v_group;
  int vgi[D / 32];
#pragma unroll
  for (int k = 0; k < D / 32; ++k)
    vgi[k] = BITS == 16 || VR != 0 ? 0 : 8 * value_chunk(s, k) / kv.v_group;

  // PL: this warp's two stage buffers; the first tile's K and V stages go out before the
  // query / RoPE setup so that their latency overlaps it.
  std::uint8_t* stk = nullptr;
  std::uint8_t* stv = nullptr;
  int v_rb = 0;
  if constexpr (PL) {
    static_assert(HM && BITS != 16, "pipelined: the quantized half_dequant path only");
    const int stage = stage_plan<D, BITS>::bytes(ng);
    v_rb = stage_plan<D, BITS>::v_rec_bytes(ng);
    stk = smem_raw + SP::pl_base + static_cast<std::size_t>(warp) * 2 * stage;
    stv = stk + stage;
    const int tile0 = blockIdx.x * tiles_per_split + warp;
    const int end0 =
        min((n + kTile - 1) / kTile, static_cast<int>(blockIdx.x + 1) * tiles_per_split);
    issue_k_stage<D, BITS, GROUP>(kv, slot, tile0 * kTile, tile0 < end0, kc, stk, lane);
    issue_v_stage<D, BITS>(kv, slot, tile0 * kTile, tile0 < end0, vc, ng, stv, lane);
  }

  // Queries (scaled) and RoPE rows 0..31 to smem: all loads first (read-only path), then the
  // stores, so the loads overlap instead of waiting one by one behind a possibly aliasing store.
  const float qscale = p.softmax_scale * 1.4426950408889634f;
  const bool rotated = BITS == 16 && kv.keys_rotated;  // keys and queries already after RoPE
  {
    constexpr int NQ = H * D / (32 * kWarps), NR = 32 * HALF / (32 * kWarps);
    float qv[NQ], cv[NR], sv[NR];
#pragma unroll
    for (int k = 0; k < NQ; ++k) {
      const int i = threadIdx.x + k * 32 * kWarps, h = i / D, c = i % D;
      qv[k] = h < nh ? __ldg(p.q + (static_cast<std::int64_t>(b) * p.n_heads + head0 + h) * D + c)
                     : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < NR; ++k) {
      const int i = threadIdx.x + k * 32 * kWarps;
      // keys_rotated: identity rows (cos 1, sin 0 rotate exactly), so the key path is unchanged.
      cv[k] = rotated ? 1.0f : __ldg(p.rope_cos + i);
      sv[k] = rotated ? 0.0f : __ldg(p.rope_sin + i);
    }
#pragma unroll
    for (int k = 0; k < NQ; ++k) {
      const int i = threadIdx.x + k * 32 * kWarps;
      qs[i / D * SP::QROW + i % D] = qv[k] * qscale;
    }
#pragma unroll
    for (int k = 0; k < NR; ++k) {
      const int i = threadIdx.x + k * 32 * kWarps;
      if constexpr (PL) {
        rcos_h[rot_layout<D>::at(i / HALF, i % HALF)] = __float2half_rn(cv[k]);
        rsin_h[rot_layout<D>::at(i / HALF, i % HALF)] = __float2half_rn(sv[k]);
      } else {
        rcos[rot_layout<D>::at(i / HALF, i % HALF)] = cv[k];
        rsin[rot_layout<D>::at(i / HALF, i % HALF)] = sv[k];
      }
    }
  }
  __syncthreads();
  __half* tile_s = tiles + warp * 32 * ROW;

  float o[VNT][4];
#pragma unroll
  for (int i = 0; i < VNT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  // Token range [t_lo, t_hi) of this CTA's kind (VR), its first tile tile0.
  int t_lo = 0, t_hi = n, tile0 = blockIdx.x * tiles_per_split;
  if constexpr (VR > 0) t_hi = min(n, vc);
  if constexpr (VR < 0) {
    t_lo = vc;
    t_hi = vc < n ? n : 0;  // an empty window: no tile (a fully masked tile would give NaN)
    tile0 += vc / kTile;
  }
  const int n_tiles = (t_hi + kTile - 1) / kTile;
  const int tile_end = min(n_tiles, tile0 + tiles_per_split);
  const float inv_as = rotated ? 1.0f : 1.0f / p.rope_attention_scaling;
  for (int tile = tile0 + warp; tile < tile_end; tile += kWarps) {
    const int p0 = tile * kTile;
    const bool has_next = tile + kWarps < tile_end;
    // 1. K tile -> smem.
    if constexpr (PL) {
      cp_async_wait1();  // this tile's K stage (its V stage may still be in flight)
      __syncwarp();
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int j = r * 8 + jl, t = p0 + j;
      const bool in = (VR >= 0 || t >= t_lo) && t < t_hi;
      if constexpr (PL)
        key_to_smem_staged<D, BITS>(kv, slot, t, in, in && t < kc, stk, j, s, rcos_h + j * SP::RROW,
                                    rsin_h + j * SP::RROW, tile_s + j * ROW);
      else if constexpr (HM)
        key_to_smem_h2<D, BITS, GROUP>(kv, slot, t, in, kc, s, rcos + j * SP::RROW,
                                       rsin + j * SP::RROW, tile_s + j * ROW);
      else
        key_to_smem<D, BITS, GROUP>(kv, slot, t, in, kc, s, rcos + j * SP::RROW,
                                    rsin + j * SP::RROW, tile_s + j * ROW);
    }
    __syncwarp();
    if constexpr (PL) {  // the K stage is consumed: the next tile's K goes out
      issue_k_stage<D, BITS, GROUP>(kv, slot, p0 + kWarps * kTile, has_next, kc, stk, lane);
    }
    // 2. S = (R_{-p0} q) . K^T, the queries rotated by the tile's base angle on the fly.
    float sacc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) sacc[i][0] = sacc[i][1] = sacc[i][2] = sacc[i][3] = 0.0f;
    const float* cos0 = rotated ? nullptr : p.rope_cos + static_cast<std::int64_t>(p0) * HALF;
    const float* sin0 = rotated ? nullptr : p.rope_sin + static_cast<std::int64_t>(p0) * HALF;
#pragma unroll
    for (int ks = 0; ks < NKS / 2; ++ks) {
      unsigned alo[4], ahi[4];
#pragma unroll
      for (int h8 = 0; h8 < 2; ++h8) {
        const int c = ks * 16 + cq + 8 * h8;
        const float2 cc =
            rotated ? make_float2(1.0f, 1.0f) : __ldg(reinterpret_cast<const float2*>(cos0 + c));
        const float2 ss =
            rotated ? make_float2(0.0f, 0.0f) : __ldg(reinterpret_cast<const float2*>(sin0 + c));
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
          const float* qrow = qs + (r0 + 8 * rr) * SP::QROW;
          const float2 x = *reinterpret_cast<const float2*>(qrow + c);
          const float2 y = *reinterpret_cast<const float2*>(qrow + c + HALF);
          alo[rr + 2 * h8] =
              pack_half2((x.x * cc.x + y.x * ss.x) * inv_as, (x.y * cc.y + y.y * ss.y) * inv_as);
          ahi[rr + 2 * h8] =
              pack_half2((y.x * cc.x - x.x * ss.x) * inv_as, (y.y * cc.y - x.y * ss.y) * inv_as);
        }
      }
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        unsigned bf[4];
        const int col = ((lane >> 3) & 1) * 8 + ((lane >> 4) ? (ks + NKS / 2) * 16 : ks * 16);
        ldsm_x4(bf, tile_s + (nt * 8 + (lane & 7)) * ROW + col);
        mma16816(sacc[nt], alo, bf[0], bf[1]);
        mma16816(sacc[nt], ahi, bf[2], bf[3]);
      }
    }
    __syncwarp();
    // 3. V tile -> the same smem.
    if constexpr (PL) {
      cp_async_wait1();  // this tile's V stage (the next K stage may still be in flight)
      __syncwarp();
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int j = r * 8 + jl, t = p0 + j;
      const bool in = (VR >= 0 || t >= t_lo) && t < t_hi;
      if constexpr (VR > 0)
        latent_to_smem<VR>(kv, slot, t, in, s, tile_s + j * ROW);
      else if constexpr (PL)
        value_to_smem_staged<D, BITS>(kv, slot, t, in, t < vc ? stv + j * v_rb : nullptr, s, vgi,
                                      ng, tile_s + j * ROW);
      else if constexpr (HM)
        value_to_smem_h2<D, BITS>(kv, slot, t, in, vc, s, vgi, ng, tile_s + j * ROW);
      else
        value_to_smem<D, BITS>(kv, slot, t, in, vc, s, vgi, ng, tile_s + j * ROW);
    }
    // 4. Online softmax on the fragments: rows r0 (e = 0, 1) and r0 + 8 (e = 2, 3).
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (const int t = p0 + nt * 8 + cq + (e & 1); t >= t_hi || (VR < 0 && t < t_lo))
          sacc[nt][e] = -INFINITY;
    if (p.logits) {  // the exact values entering exp2 below (this CTA's tokens, real heads only)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int t = p0 + nt * 8 + cq + (e & 1), h = r0 + 8 * (e >> 1);
          if (t >= t_lo && t < t_hi && h < nh)
            p.logits[(static_cast<std::int64_t>(b) * p.n_heads + head0 + h) * p.max_tokens + t] =
                sacc[nt][e];
        }
    }
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) mx = fmaxf(mx, fmaxf(sacc[nt][2 * rr], sacc[nt][2 * rr + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[rr], mx);  // finite: token p0 < n is in the tile
      const float alpha = exp2f(m[rr] - m_new);
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int e = 2 * rr; e < 2 * rr + 2; ++e) {
          sacc[nt][e] = exp2f(sacc[nt][e] - m_new);
          sum += sacc[nt][e];
        }
      l[rr] = l[rr] * alpha + sum;  // this lane's columns; summed over the quad at the end
      m[rr] = m_new;
#pragma unroll
      for (int i = 0; i < VNT; ++i) {
        o[i][2 * rr] *= alpha;
        o[i][2 * rr + 1] *= alpha;
      }
    }
    __syncwarp();
    if constexpr (PL) {  // the V stage is consumed: the next tile's V goes out
      issue_v_stage<D, BITS>(kv, slot, p0 + kWarps * kTile, has_next, vc, ng, stv, lane);
    }
    // 5. O += P V: P from the S fragments (the C layout of two n-tiles is the A layout).
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      const unsigned pa[4] = {pack_half2(sacc[2 * kk][0], sacc[2 * kk][1]),
                              pack_half2(sacc[2 * kk][2], sacc[2 * kk][3]),
                              pack_half2(sacc[2 * kk + 1][0], sacc[2 * kk + 1][1]),
                              pack_half2(sacc[2 * kk + 1][2], sacc[2 * kk + 1][3])};
#pragma unroll
      for (int nt = 0; nt < VNT; nt += 2) {
        unsigned bf[4];
        const int row = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        ldsm_x4_trans(bf, tile_s + row * ROW + (nt + (lane >> 4)) * 8);
        mma16816(o[nt], pa, bf[0], bf[1]);
        mma16816(o[nt + 1], pa, bf[2], bf[3]);
      }
    }
    __syncwarp();
  }

  // Merge the 4 warps' states in smem (the tile buffers are free now), one partial per CTA:
  // [B, n_heads, n_parts] x (m, l) and x d in the workspace.
  if constexpr (PL) cp_async_wait_all();  // only empty groups are left; no copy outlives the CTA
  __syncthreads();
  float* red_o = reinterpret_cast<float*>(tiles);  // [kWarps][16][D]
  float* red_ml = qs;                              // [kWarps][16][2] (queries no longer needed)
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    float lh = l[rr];
    lh += __shfl_xor_sync(0xffffffffu, lh, 1);
    lh += __shfl_xor_sync(0xffffffffu, lh, 2);
    const int h = r0 + 8 * rr;
    if (s == 0) {
      red_ml[(warp * H + h) * 2] = m[rr];
      red_ml[(warp * H + h) * 2 + 1] = lh;
    }
#pragma unroll
    for (int i = 0; i < VNT; ++i)
      *reinterpret_cast<float2*>(&red_o[(warp * H + h) * D + i * 8 + cq]) =
          make_float2(o[i][2 * rr], o[i][2 * rr + 1]);
  }
  __syncthreads();
  const int part = VR < 0 ? n_parts - static_cast<int>(gridDim.x) + blockIdx.x : blockIdx.x;
  if constexpr (VR > 0) {
    latent_partial_out<D, VR>(p, red_o, red_ml, rcos, nh, b, g, head0, part, n_parts);
    return;
  }
  float* ws_ml = static_cast<float*>(p.workspace);
  float* ws_acc = ws_ml + static_cast<std::int64_t>(kv.batch) * p.n_heads * n_parts * 2;
  for (int i = threadIdx.x; i < nh * D; i += blockDim.x) {
    const int h = i / D, c = i % D;
    float num, den;
    const float mx = merge_warp_partials<kWarps, H>(red_o, red_ml, D, h, c, num, den);
    const std::int64_t row =
        (static_cast<std::int64_t>(b) * p.n_heads + head0 + h) * n_parts + part;
    ws_acc[row * D + c] = num;
    if (c == 0) {
      ws_ml[2 * row] = mx;
      ws_ml[2 * row + 1] = den;
    }
  }
}

// grid (n_heads, B), block D, dynamic smem n_parts floats: log-sum-exp merge of the CTAs'
// partials; the loads of different partials are independent, so they overlap.
template <int D>
__global__ void decode_attention_merge_kernel(decode_attention_params p, int n_parts) {
  extern __shared__ float wts[];  // [n_parts]
  __shared__ float red[D / 32];
  const int h = blockIdx.x, b = blockIdx.y, c = threadIdx.x, lane = c % 32, warp = c / 32;
  const float* ws_ml = static_cast<const float*>(p.workspace);
  const float* ws_acc = ws_ml + static_cast<std::int64_t>(p.kv.batch) * p.n_heads * n_parts * 2;
  const std::int64_t row0 = (static_cast<std::int64_t>(b) * p.n_heads + h) * n_parts;
  float mx = -INFINITY;
  for (int i = c; i < n_parts; i += D) mx = fmaxf(mx, ws_ml[2 * (row0 + i)]);
#pragma unroll
  for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = red[0];
#pragma unroll
  for (int w = 1; w < D / 32; ++w) mx = fmaxf(mx, red[w]);
  __syncthreads();
  float den = 0.0f;
  for (int i = c; i < n_parts; i += D) {
    const float mi = ws_ml[2 * (row0 + i)];
    const float w = mi == -INFINITY ? 0.0f : exp2f(mi - mx);
    wts[i] = w;
    den += w * ws_ml[2 * (row0 + i) + 1];
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) den += __shfl_xor_sync(0xffffffffu, den, o);
  if (lane == 0) red[warp] = den;
  __syncthreads();
  den = 0.0f;
#pragma unroll
  for (int w = 0; w < D / 32; ++w) den += red[w];
  float num = 0.0f;
  if (mx > -INFINITY) {
#pragma unroll 8
    for (int i = 0; i < n_parts; ++i) num += wts[i] * ws_acc[(row0 + i) * D + c];
  }
  p.out[(static_cast<std::int64_t>(b) * p.n_heads + h) * D + c] = den > 0.0f ? num / den : 0.0f;
  if (p.row_stats && c == 0) {
    p.row_stats[(static_cast<std::int64_t>(b) * p.n_heads + h) * 2] = mx;
    p.row_stats[(static_cast<std::int64_t>(b) * p.n_heads + h) * 2 + 1] = den;
  }
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
  int splits = 1, tiles_per_split = 1, n_parts = 1;
  // V latent mode: `splits` cover the compressed range, w_splits x w_tiles_per_split the window
  // range (partials splits .. n_parts - 1).
  int w_splits = 0, w_tiles_per_split = 1;
};

split_plan plan_splits(const decode_attention_params& p) {
  split_plan sp;
  const int n_kv = p.kv.n_kv > 0 ? p.kv.n_kv : 1;
  const int gq = p.n_heads / n_kv;
  // register_direct: its own CTA shape (decode_attention_rd.h), same plan otherwise.
  const bool rd = p.register_direct && decode_attention_rd_supported(p);
  const int head_tile = rd ? kRdHeadsPerCta : kHeadTile;
  const int n_hg = (gq + head_tile - 1) / head_tile;
  const int tiles = (p.max_tokens + kTile - 1) / kTile;
  const long ctas = static_cast<long>(p.kv.batch) * n_kv * (n_hg > 0 ? n_hg : 1);
  // One wave of CTAs (3 fit an SM at head_dim 128), each warp with at least one tile; at most
  // 4096 partials per (sequence, head) (the merge keeps their weights in shared memory).
  long want = static_cast<long>(rd ? KVCAL_RD_MIN_BLOCKS : KVCAL_DA_MIN_BLOCKS) * sm_count() /
              (ctas > 0 ? ctas : 1);
  if (want < 1) want = 1;
  int tps = static_cast<int>((tiles + want - 1) / (want > 0 ? want : 1));
  if (tps < kWarps) tps = kWarps;
  if ((tiles + tps - 1) / tps > 4096) tps = (tiles + 4095) / 4096;
  sp.tiles_per_split = tps;
  sp.splits = tiles > 0 ? (tiles + tps - 1) / tps : 1;
  sp.n_parts = sp.splits;
  if (p.kv.v_latent_rank > 0) {
    // The window range [v_compressed, n) spans at most win_cap tokens plus one tile of
    // alignment; at most 8 window CTAs per (sequence, head group), each warp one tile or more.
    const int w_tiles = (p.kv.win_cap + kTile - 1) / kTile + 1;
    int wtps = (w_tiles + 7) / 8;
    if (wtps < kWarps) wtps = kWarps;
    sp.w_tiles_per_split = wtps;
    sp.w_splits = (w_tiles + wtps - 1) / wtps;
    sp.n_parts = sp.splits + sp.w_splits;
  }
  return sp;
}

// V latent mode: the compressed range (rank VR) and the window range as two grids writing
// disjoint partials of one workspace, then the ordinary merge. The K path is the unpipelined
// half_dequant one (half_dequant / pipelined are ignored here).
template <int D, int BITS, int GROUP, int VR>
cudaError_t run_latent_variant(const decode_attention_params& p, const split_plan& sp,
                               cudaStream_t stream) {
  const int gq = p.n_heads / p.kv.n_kv, n_hg = (gq + kHeadTile - 1) / kHeadTile;
  constexpr std::size_t smem = smem_plan<D>::bytes;
  static const cudaError_t attr_l =
      cudaFuncSetAttribute(decode_attention_kernel<D, BITS, GROUP, true, false, VR>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  static const cudaError_t attr_w =
      cudaFuncSetAttribute(decode_attention_kernel<D, BITS, GROUP, true, false, -1>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (attr_l != cudaSuccess) return attr_l;
  if (attr_w != cudaSuccess) return attr_w;
  decode_attention_kernel<D, BITS, GROUP, true, false, VR>
      <<<dim3(sp.splits, p.kv.n_kv * n_hg, p.kv.batch), 32 * kWarps, smem, stream>>>(
          p, sp.tiles_per_split, sp.n_parts);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  decode_attention_kernel<D, BITS, GROUP, true, false, -1>
      <<<dim3(sp.w_splits, p.kv.n_kv * n_hg, p.kv.batch), 32 * kWarps, smem, stream>>>(
          p, sp.w_tiles_per_split, sp.n_parts);
  e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  decode_attention_merge_kernel<D>
      <<<dim3(p.n_heads, p.kv.batch), D, sp.n_parts * sizeof(float), stream>>>(p, sp.n_parts);
  return cudaGetLastError();
}

template <int D, int BITS, int GROUP>
cudaError_t run_latent(const decode_attention_params& p, const split_plan& sp,
                       cudaStream_t stream) {
  switch (p.kv.v_latent_rank) {
    case 16:
      return run_latent_variant<D, BITS, GROUP, 16>(p, sp, stream);
    case 32:
      return run_latent_variant<D, BITS, GROUP, 32>(p, sp, stream);
    case 64:
      return run_latent_variant<D, BITS, GROUP, 64>(p, sp, stream);
    case 96:
      if constexpr (D >= 96) return run_latent_variant<D, BITS, GROUP, 96>(p, sp, stream);
      break;
    case 128:
      if constexpr (D >= 128) return run_latent_variant<D, BITS, GROUP, 128>(p, sp, stream);
      break;
    default:
      break;
  }
  return invalid("V latent rank " + std::to_string(p.kv.v_latent_rank) +
                 " is not supported (16, 32, 64, 96, 128; at most head_dim " + std::to_string(D) +
                 ")");
}

template <int D, int BITS, int GROUP, bool HM, bool PL>
cudaError_t run_variant(const decode_attention_params& p, const split_plan& sp,
                        cudaStream_t stream) {
  const int gq = p.n_heads / p.kv.n_kv, n_hg = (gq + kHeadTile - 1) / kHeadTile;
  // PL: the stage buffers follow the V group (the largest stage: V group 8, D / 8 scales).
  std::size_t smem = smem_plan<D>::bytes;
  constexpr std::size_t smem_max =
      PL ? smem_plan<D>::pl_bytes(stage_plan<D, BITS>::bytes(D / 8)) : smem_plan<D>::bytes;
  if constexpr (PL) smem = smem_plan<D>::pl_bytes(stage_plan<D, BITS>::bytes(D / p.kv.v_group));
  static const cudaError_t attr =
      cudaFuncSetAttribute(decode_attention_kernel<D, BITS, GROUP, HM, PL>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_max));
  if (attr != cudaSuccess) return attr;
  decode_attention_kernel<D, BITS, GROUP, HM, PL>
      <<<dim3(sp.splits, p.kv.n_kv * n_hg, p.kv.batch), 32 * kWarps, smem, stream>>>(
          p, sp.tiles_per_split, sp.n_parts);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  decode_attention_merge_kernel<D>
      <<<dim3(p.n_heads, p.kv.batch), D, sp.n_parts * sizeof(float), stream>>>(p, sp.n_parts);
  return cudaGetLastError();
}

template <int D, int BITS, int GROUP>
cudaError_t run(const decode_attention_params& p, const split_plan& sp, cudaStream_t stream) {
  if (p.kv.v_latent_rank > 0) return run_latent<D, BITS, GROUP>(p, sp, stream);
  if constexpr (BITS != 16) {
    if (p.pipelined && p.half_dequant)
      return run_variant<D, BITS, GROUP, true, true>(p, sp, stream);
  }
  return p.half_dequant ? run_variant<D, BITS, GROUP, true, false>(p, sp, stream)
                        : run_variant<D, BITS, GROUP, false, false>(p, sp, stream);
}

// The one dispatch: head_dim, then bits, then group.
template <int D, int BITS>
cudaError_t dispatch_group(const decode_attention_params& p, const split_plan& sp,
                           cudaStream_t stream) {
  switch (p.kv.k_group) {
    case 32:
      return run<D, BITS, 32>(p, sp, stream);
    case 64:
      return run<D, BITS, 64>(p, sp, stream);
    case 128:
      return run<D, BITS, 128>(p, sp, stream);
    default:
      return invalid("K group " + std::to_string(p.kv.k_group) + " is not supported (32, 64, 128)");
  }
}

template <int D>
cudaError_t dispatch_bits(const decode_attention_params& p, const split_plan& sp,
                          cudaStream_t stream) {
  switch (p.kv.k_bits) {
    case 2:
      return dispatch_group<D, 2>(p, sp, stream);
    case 4:
      return dispatch_group<D, 4>(p, sp, stream);
    case 8:
      return dispatch_group<D, 8>(p, sp, stream);
    case 16:
      return run<D, 16, 32>(p, sp, stream);
    default:
      return invalid("bits " + std::to_string(p.kv.k_bits) +
                     " is not supported (2, 4, 8; 16 = fp16; 3 only by register_direct, not in the "
                     "V latent mode)");
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
  const bool latent = kv.v_latent_rank != 0;
  if (latent) {
    const int r = kv.v_latent_rank;
    if ((r != 16 && r != 32 && r != 64 && r != 96 && r != 128) || r > d)
      return invalid("V latent rank " + std::to_string(r) +
                     " is not supported (16, 32, 64, 96, 128; at most head_dim " +
                     std::to_string(d) + ")");
    if (kv.v_latent_bits != 16 && kv.v_latent_bits != 8 && kv.v_latent_bits != 4)
      return invalid("V latent bits " + std::to_string(kv.v_latent_bits) +
                     " is not supported (16, 8, 4)");
    if (!kv.v_rec || !kv.v_compressed || !kv.v_dec_w || !kv.v_dec_b)
      return invalid("V latent mode needs the latent records, v_compressed and dec_w / dec_b");
    if (!aligned(kv.v_dec_w, 16)) return invalid("V latent dec_w must be 16-byte aligned");
  }
  if (kv.k_latent_rank != 0) {
    // Only the register-direct kernel reads latent keys; no other kernel may see this view.
    if (!p.register_direct || !decode_attention_rd_supported(p))
      return invalid("K latent mode (k_latent_rank " + std::to_string(kv.k_latent_rank) +
                     ", k_latent_bits " + std::to_string(kv.k_latent_bits) +
                     ") runs only in the register-direct kernel: needs register_direct, head_dim "
                     "128, keys before RoPE, the V latent mode with the same rank (16, 32, 64, "
                     "96, 128; got V rank " +
                     std::to_string(kv.v_latent_rank) + ") and latent bits 16 / 8 / 4");
    if (!kv.k_rec || !kv.k_dec_w || !kv.k_dec_b)
      return invalid("K latent mode needs the latent K records and k_dec_w / k_dec_b");
  }
  // 3-bit and mixed K / V widths: the register-direct kernel only (the kernels below read both
  // streams at the K width, so anything else is refused here rather than misread).
  const bool rd = p.register_direct && decode_attention_rd_supported(p);
  if (!latent && !rd && (kv.k_bits != kv.v_bits || kv.k_bits == 3))
    return invalid(
        "K " + std::to_string(kv.k_bits) + "-bit with V " + std::to_string(kv.v_bits) +
        "-bit: 3-bit or mixed K / V widths need register_direct at head_dim 128 (K 2 / 3 "
        "/ 4 / 8 bits, V 2 / 3 / 4 / 8 bits no wider than K, K group 32 / 64 / 128, V "
        "group 16 / 32 / 64 / 128); the other kernels take K and V of the same 2 / 4 / "
        "8 bits");
  if (!latent && kv.k_bits != 16 && (kv.v_group <= 0 || kv.v_group % 8 != 0 || d % kv.v_group != 0))
    return invalid("V per-token group " + std::to_string(kv.v_group) +
                   " must be a multiple of 8 dividing head_dim " + std::to_string(d));
  if (kv.keys_rotated && kv.k_bits != 16)
    return invalid("keys_rotated needs bits 16 (fp16 keys stored after RoPE), got bits " +
                   std::to_string(kv.k_bits));
  if (!p.q || !p.out || (!kv.keys_rotated && (!p.rope_cos || !p.rope_sin)) || !kv.n_tokens ||
      !kv.k_win || !kv.v_win || kv.win_cap <= 0)
    return invalid("q, out, RoPE tables, n_tokens and the fp16 window (win_cap > 0) are required");
  if (kv.k_bits != 16 &&
      (!kv.k_rec || !kv.k_compressed || (!latent && (!kv.v_rec || !kv.v_compressed))))
    return invalid("quantized K/V need records and the k_compressed / v_compressed counters");
  if (!aligned(kv.k_rec, 16) || !aligned(kv.v_rec, 16) || !aligned(kv.k_win, 16) ||
      !aligned(kv.v_win, 16) || !aligned(p.workspace, 16))
    return invalid("records, windows and workspace must be 16-byte aligned");
  if (p.max_tokens <= 0 ||
      (!kv.keys_rotated && (p.rope_rows < p.max_tokens || p.rope_rows < kTile)))
    return invalid("max_tokens " + std::to_string(p.max_tokens) +
                   " needs RoPE rows for it (and >= " + std::to_string(kTile) + "), got " +
                   std::to_string(p.rope_rows));
  if (p.softmax_scale == 0.0f) p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(d));
  if (p.rope_attention_scaling == 0.0f) p.rope_attention_scaling = 1.0f;
  const std::size_t need = decode_attention_workspace_size(p);
  if (!p.workspace || p.workspace_bytes < need)
    return invalid("workspace of " + std::to_string(p.workspace_bytes) + " bytes, need " +
                   std::to_string(need));
  set_launch_error("");
  const split_plan sp = plan_splits(p);
  if (rd) {  // else: the kernels below
    decode_attention_rd_plan rp;
    rp.splits = sp.splits, rp.tiles_per_split = sp.tiles_per_split, rp.n_parts = sp.n_parts;
    rp.w_splits = sp.w_splits, rp.w_tiles_per_split = sp.w_tiles_per_split;
    const cudaError_t e = launch_decode_attention_rd_partials(p, rp, stream);
    if (e != cudaSuccess) return e;
    decode_attention_merge_kernel<128>
        <<<dim3(p.n_heads, p.kv.batch), 128, sp.n_parts * sizeof(float), stream>>>(p, sp.n_parts);
    return cudaGetLastError();
  }
  switch (d) {
    case 64:
      return dispatch_bits<64>(p, sp, stream);
    case 128:
      return dispatch_bits<128>(p, sp, stream);
    default:
      return invalid("head_dim " + std::to_string(d) + " is not supported (64, 128)");
  }
}

}  // namespace kvcal
