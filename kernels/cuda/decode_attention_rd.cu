// Register-direct partial kernel of the split-KV decode attention (decode_attention_rd.h).
//
// Per warp and 32-token tile (two 16-token m-tiles), transposed products:
//   S^T [16 tok x 8 heads] = K [16 tok x 128 ch] * Q^T [128 ch x 8 heads]   (8 mma per m-tile)
//   O^T [128 ch x 8 heads] += V^T [128 ch x 16 tok] * P^T [16 tok x 8 heads] (8 mma per k-chunk)
// so the heads of a KV head sit in the mma's n = 8 and K / V come in as the A operand, built in
// registers from the packed bytes (g = lane / 4, t = lane % 4):
//   K: k-chunk kk of the scores takes channels 16t + 2kk (+1) (a0: token g, a1: token g + 8) and
//      their RoPE partners 64 + 16t + 2kk (+1) (a2, a3): a lane reads two contiguous runs of 16
//      codes per token and rotates in registers (the sum over channels is order-free).
//   V: m-tile i of the output maps row g to channel 16g + 2i and row g + 8 to 16g + 2i + 1: a lane
//      reads 16 contiguous codes of tokens 2t, 2t + 1, 2t + 8, 2t + 9 and interleaves the two
//      tokens of a pair into the half2 of the A fragment.
//   P^T: the S^T accumulators (token g, heads 2t, 2t + 1) packed to half2 are the fragment of an
//      8x8 matrix; movmatrix.trans turns them into the B fragment of P^T (tokens 2t, 2t + 1 of
//      head g).
// The arithmetic per element is that of the pipelined half_dequant kernel (HFMA2 dequantization,
// half2 rotation by the in-tile angle, fp32 query rotation by the tile angle, exp2 softmax in
// fp32); only the order of the sums differs. Records are staged per warp by cp.async one half-tile
// ahead (K stage, V stage) as in decode_attention.cu.
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/decode_attention_rd.h"
#include "kernels/cuda/device_util.cuh"

namespace kvcal {

namespace {

using namespace cuda_dev;

using rd_plan = decode_attention_rd_plan;

constexpr int D = 128, HALF = 64;
constexpr int kWarps = 4;               // warps per CTA, each with its own softmax state
constexpr int kTile = 32;               // tokens per warp iteration (the split plan's unit)
constexpr int kHeads = kRdHeadsPerCta;  // query heads per CTA: the mma's n
constexpr int kQRow = D + 4;            // floats per query row in smem
constexpr int kQBytes = kHeads * kQRow * 4;
// Lane RoPE rows: uint2 [4 key offsets][8 channel pairs kk][32 lanes] = (cos, sin) of the lane's
// pair kk (fp16 half2 each): lane-major so that the 8-byte reads of a warp are conflict-free.
constexpr int kRopeBytes = 4 * 8 * 32 * 8;

// BITS_V: the V records' width (mixed K / V widths; the K width otherwise).
template <int BITS, int BITS_V = BITS>
struct rd_stage {
  // K stage: fp16 scales [D], zeros [D], codes of the tile's 32 rows (one record holds the tile;
  // none at bits 16), then the fp32 RoPE rows cos, sin [D / 2] of the tile start p0 (for the
  // query rotation; identity rows with keys_rotated).
  static constexpr int k_rope = BITS == 16 ? 0 : 4 * D + kTile * D * BITS / 8;
  static constexpr int k_bytes = k_rope + 2 * HALF * 4;
  static constexpr __host__ __device__ int v_rec_bytes(int ng) { return 4 * ng + D * BITS_V / 8; }
  // V stage: the records of the tile's tokens below v_compressed, back to back (quantized V
  // only: bits 16 and the V latent mode read V from global memory directly).
  static constexpr __host__ __device__ int v_bytes(int ng) {
    return BITS == 16 ? 0 : (kTile * v_rec_bytes(ng) + 15) / 16 * 16;
  }
  // The stages of all warps; the end-of-CTA reduction [kWarps][kHeads][D] floats reuses them.
  static constexpr __host__ __device__ int area(int vbytes) {
    const int st = kWarps * (k_bytes + vbytes), red = kWarps * kHeads * D * 4;
    return st > red ? st : red;
  }
  static constexpr __host__ __device__ int smem(int vbytes) {
    return kQBytes + kRopeBytes + area(vbytes);
  }
};

__device__ __forceinline__ unsigned movmatrix_trans(unsigned x) {
  unsigned y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// Codes 2i, 2i + 1 (i < 8) of a run of 16 codes (w: its 16 * BITS bits, LSB first) as half2.
template <int BITS>
__device__ __forceinline__ __half2 run_pair(const unsigned* w, int i) {
  if constexpr (BITS == 2) {
    const unsigned x = w[0] >> (16 * (i / 4));
    return code_pair<2>(&x, i % 4);
  } else if constexpr (BITS == 3) {  // w: the two 8-code chunks of load_v_run
    return code_pair<3>(w + i / 4, i % 4);
  } else {
    return code_pair<BITS>(w + (i / 4) * (BITS / 4), i % 4);
  }
}

// half2 (code idx of run a, code idx of run b) of two runs of 16 codes (idx < 16): the bytes
// holding the codes side by side (PRMT; shared by the codes of one byte), mask and the 0x6400
// exponent (LOP3: 1024 + code << s, s the code's bit offset in its byte), then one exact HADD2 /
// HFMA2 by (2^-s, -1024 2^-s) as code_pair (device_util.cuh).
template <int BITS>
__device__ __forceinline__ __half2 code_pair2(const unsigned* wa, const unsigned* wb, int idx) {
  constexpr int PER_WORD = 32 / BITS;
  const int w = idx / PER_WORD, bit = (idx % PER_WORD) * BITS, k = bit / 8, s = bit % 8;
  const unsigned t = __byte_perm(wa[w], wb[w], static_cast<unsigned>(k | ((k + 4) << 8)));
  const unsigned v = (t & ((((1u << BITS) - 1u) << s) * 0x00010001u)) | 0x64006400u;
  if (s == 0) return __hsub2(as_h2(v), __float2half2_rn(1024.0f));
  const unsigned mul = static_cast<unsigned>((15 - s) << 10) * 0x00010001u;  // 2^-s
  const unsigned add = (0x8000u | static_cast<unsigned>((25 - s) << 10)) * 0x00010001u;
  return __hfma2(as_h2(v), as_h2(mul), as_h2(add));
}

// 3-bit runs. A run of 16 codes is 6 bytes and 8 codes are 3, so no run starts on a 4-byte
// boundary in general: K (8 codes at byte 6t + 3kq of a 48-byte token row) and V (16 codes at
// byte 6g of a record whose codes start 4-byte aligned) are read as the two aligned 32-bit words
// that cover them (shared memory, 4-byte loads only: always legal) and shifted into place by a
// funnel shift. A V run is kept as two 8-code chunks of 24 bits (w[0]: codes 0-7, w[1]: 8-15),
// so that no code straddles a word and code_pair<3> / v_code_pair2<3> read any code directly.
template <int BV>
constexpr int v_run_words = BV == 3 ? 2 : BV / 2;

// Run g (codes [16g, 16g + 16), 2 BV bytes at byte 2 BV g) of the codes of a V record (codes:
// 4-byte aligned) in the words run_pair / v_code_pair2 read. The 3-bit read covers the 8 bytes
// from byte 6g rounded down to 4: inside the record's 48 code bytes.
template <int BV>
__device__ __forceinline__ void load_v_run(const std::uint8_t* codes, int g, unsigned* w) {
  if constexpr (BV == 3) {
    const unsigned* q = reinterpret_cast<const unsigned*>(codes) + (3 * g >> 1);
    const unsigned s = (g & 1) << 4;  // byte 6g: 0 or 2 past word 3g / 2
    const unsigned x1 = q[1];
    const unsigned lo = __funnelshift_r(q[0], x1, s), hi = x1 >> s;  // bits 0-31, 32-47
    w[0] = lo;                                                       // codes 0-7: bits 0-23
    w[1] = __funnelshift_r(lo, hi, 24);                              // codes 8-15
  } else {
    const unsigned* src = reinterpret_cast<const unsigned*>(codes + 2 * BV * g);
#pragma unroll
    for (int i = 0; i < BV / 2; ++i) w[i] = src[i];
  }
}

// 8 K codes (BITS bytes) of shared memory at p into w: load_words_smem (p aligned to BITS bytes)
// or, at 3 bits, the two aligned words covering them funnel-shifted (codes at bits 0-23 of w[0];
// sh = 8 (p mod 4); the word past them stays inside the K stage).
template <int BITS>
__device__ __forceinline__ void load_k_codes(const std::uint8_t* p, unsigned sh, unsigned* w) {
  if constexpr (BITS == 3) {
    const unsigned* q = reinterpret_cast<const unsigned*>(p - sh / 8);
    w[0] = __funnelshift_r(q[0], q[1], sh);
  } else {
    load_words_smem<BITS>(p, w);  // sh unused
  }
}

// code_pair2 for the V runs of load_v_run: at 3 bits the code idx of each run is read from its
// 8-code chunk (a code may straddle two bytes: PRMT takes both bytes of each run).
template <int BV>
__device__ __forceinline__ __half2 v_code_pair2(const unsigned* wa, const unsigned* wb, int idx) {
  if constexpr (BV == 3) {
    const int w = idx / 8, bit = 3 * (idx % 8), k = bit / 8;
    const unsigned t = __byte_perm(
        wa[w], wb[w], static_cast<unsigned>(k | ((k + 1) << 4) | ((k + 4) << 8) | ((k + 5) << 12)));
    const unsigned v = ((t >> (bit % 8)) & 0x00070007u) | 0x64006400u;
    return __hsub2(as_h2(v), __float2half2_rn(1024.0f));
  } else {
    return code_pair2<BV>(wa, wb, idx);
  }
}

// The in-tile rotation of the half_dequant kernels: (lo, hi) of channels c, c + 64 by angle j f.
__device__ __forceinline__ void rotate(__half2 lo, __half2 hi, unsigned c, unsigned s, unsigned& rl,
                                       unsigned& rh) {
  rl = h2_bits(__hfma2(lo, as_h2(c), __hneg2(__hmul2(hi, as_h2(s)))));
  rh = h2_bits(__hfma2(hi, as_h2(c), __hmul2(lo, as_h2(s))));
}

// GROUP 0: the K group read from kv (the latent-mode kernels, fewer instantiations).
template <int BITS, int GROUP>
__device__ __forceinline__ void issue_k(const packed_kv_view& kv, std::int64_t slot, int p0,
                                        bool has, int kc, const float* rope_cos,
                                        const float* rope_sin, bool rotated, bool a16,
                                        std::uint8_t* buf, int lane) {
  constexpr int R = rd_stage<BITS>::k_rope;
  // a16 (CTA-uniform): the RoPE tables and K records are 16-byte aligned, so every copy below is
  // (rows of 256 bytes, records and tile offsets multiples of 16): fixed 16-byte copies per lane.
  if (has && !rotated) {  // the RoPE rows of p0: lanes 0-15 cos, 16-31 sin
    if (a16) {
      cp_async16(buf + R + 16 * lane, reinterpret_cast<const std::uint8_t*>(
                                          (lane < 16 ? rope_cos : rope_sin) + p0 * HALF) +
                                          16 * (lane % 16));
    } else {
      warp_copy_async(buf + R, reinterpret_cast<const std::uint8_t*>(rope_cos + p0 * HALF),
                      4 * HALF, lane);
      warp_copy_async(buf + R + 4 * HALF,
                      reinterpret_cast<const std::uint8_t*>(rope_sin + p0 * HALF), 4 * HALF, lane);
    }
  }
  if constexpr (BITS != 16) {
    if (has && p0 < kc) {
      const int grp = GROUP > 0 ? GROUP : kv.k_group;
      const std::int64_t rec_bytes = 4 * D + static_cast<std::int64_t>(grp) * D * BITS / 8;
      const std::uint8_t* rec = kv.k_rec + (slot * kv.k_slot_records + p0 / grp) * rec_bytes;
      const std::uint8_t* codes = rec + 4 * D + (p0 % grp) * D * BITS / 8;
      if (a16) {  // scales + zeros: 32 chunks; codes: 32 BITS chunks
        cp_async16(buf + 16 * lane, rec + 16 * lane);
#pragma unroll
        for (int i = 0; i < BITS; ++i)
          cp_async16(buf + 4 * D + 16 * (lane + 32 * i), codes + 16 * (lane + 32 * i));
      } else {
        warp_copy_async(buf, rec, 4 * D, lane);
        warp_copy_async(buf + 4 * D, codes, kTile * D * BITS / 8, lane);
      }
    }
  }
  cp_async_commit();  // possibly empty: keeps the wait_group count uniform
}

__device__ __forceinline__ void issue_v(const packed_kv_view& kv, std::int64_t slot, int p0,
                                        bool has, int vc, int v_rb, std::uint8_t* buf, int lane) {
  const int nv = has ? min(kTile, vc - p0) : 0;
  if (nv > 0)
    warp_copy_async(buf, kv.v_rec + (slot * kv.v_slot_records + p0) * v_rb, nv * v_rb, lane);
  cp_async_commit();
}

// The lane's 16 value channels [16g, 16g + 16) of token t as 8 half2 (channel pairs): from its
// record in the V stage (rec), the fp16 window, or zeros past n_tokens.
template <int BITS>
__device__ __forceinline__ void value_run(const packed_kv_view& kv, std::int64_t slot, int t, int n,
                                          int vc, const std::uint8_t* rec, int ng, int vgrp, int g,
                                          unsigned* out) {
  if (BITS != 16 && t < n && t < vc) {
    const __half* hs = reinterpret_cast<const __half*>(rec);
    const __half2 sc = __half2half2(hs[vgrp]), ze = __half2half2(hs[ng + vgrp]);
    // 16 codes = 2 * BITS bytes; records are only 4-byte aligned in the stage.
    if constexpr (BITS != 16) {
      unsigned w[v_run_words<BITS>];
      load_v_run<BITS>(rec + 4 * ng, g, w);
#pragma unroll
      for (int i = 0; i < 8; ++i) out[i] = h2_bits(__hfma2(run_pair<BITS>(w, i), sc, ze));
    }
  } else if (t < n) {
    const uint4* src = reinterpret_cast<const uint4*>(
        kv.v_win + (slot * kv.win_cap + t % kv.win_cap) * D + 16 * g);
    const uint4 a = __ldg(src), c = __ldg(src + 1);
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
    out[4] = c.x, out[5] = c.y, out[6] = c.z, out[7] = c.w;
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = 0u;
  }
}

// O^T += V^T P^T for the 16 tokens of k-chunk kc2 with fp16 V from the ring (bits 16, the latent
// mode's window CTAs): tokens ja, ja + 1, ja + 8, ja + 9 (ja = 16 kc2 + 2t) in [t_lo, t_hi), zeros
// elsewhere; the lane's channels 16g + [0, 8) then + [8, 16) (one uint4 per token at a time).
__device__ __forceinline__ void values_fp16(const packed_kv_view& kv, std::int64_t slot, int p0,
                                            int ja, int t_lo, int t_hi, int g, unsigned pb0,
                                            unsigned pb1, float (*o)[4]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    unsigned x[4][4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int t = p0 + ja + (r & 1) + 8 * (r >> 1);
      uint4 w = make_uint4(0u, 0u, 0u, 0u);
      if (t >= t_lo && t < t_hi)
        w = __ldg(reinterpret_cast<const uint4*>(
            kv.v_win + (slot * kv.win_cap + t % kv.win_cap) * D + 16 * g + 8 * h));
      x[r][0] = w.x, x[r][1] = w.y, x[r][2] = w.z, x[r][3] = w.w;
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      // m-tile 4h + k: rows g / g + 8 = channels 16g + 8h + 2k (+1), tokens (ja, ja+1), (ja+8,
      // ja+9).
      const unsigned a[4] = {
          __byte_perm(x[0][k], x[1][k], 0x5410), __byte_perm(x[0][k], x[1][k], 0x7632),
          __byte_perm(x[2][k], x[3][k], 0x5410), __byte_perm(x[2][k], x[3][k], 0x7632)};
      mma16816(o[4 * h + k], a, pb0, pb1);
    }
  }
}

// CB bytes at p (CB in 1, 2, 4, 6, 8, 12, 16; p aligned to 4 when CB % 4 == 0, else to 2 when CB
// is even) into words LSB first.
template <int CB>
__device__ __forceinline__ void load_run(const std::uint8_t* p, unsigned* w) {
  if constexpr (CB % 4 == 0) {
#pragma unroll
    for (int i = 0; i < CB / 4; ++i) w[i] = __ldg(reinterpret_cast<const unsigned*>(p) + i);
  } else if constexpr (CB % 2 == 0) {
    const unsigned short* h = reinterpret_cast<const unsigned short*>(p);
#pragma unroll
    for (int i = 0; i < (CB + 3) / 4; ++i) {
      const unsigned lo = __ldg(h + 2 * i);
      const unsigned hi = 2 * i + 1 < CB / 2 ? static_cast<unsigned>(__ldg(h + 2 * i + 1)) : 0u;
      w[i] = lo | (hi << 16);
    }
  } else {
    static_assert(CB == 1, "load_run: 1, or an even number of bytes");
    w[0] = __ldg(p);
  }
}

// Latent mode, 8 / 4-bit latents: z = code * scale + zero (HFMA2, one scale / zero per token, the
// arithmetic of the pipelined kernel's latent path), the two tokens of a pair interleaved into
// the half2 of the A fragment. Lane g holds latent channels [2 MT g, 2 MT g + 2 MT): m-tile i
// rows g / g + 8 = channels 2 MT g + 2i (+1).
template <int VR, int LB>
__device__ __forceinline__ void values_latent_q(const std::uint8_t* rec0, int rb, const bool* ok,
                                                int g, unsigned pb0, unsigned pb1, float (*o)[4]) {
  constexpr int MT = VR / 16, CB = 2 * MT * LB / 8;
  // 16 bytes per token (8-bit, rank 128) in two halves of 8: fewer live registers (no spills).
  constexpr int NC = CB == 16 ? 2 : 1, CC = CB / NC, NW = (CC + 3) / 4, MC = MT / NC;
  __half sc[4], ze[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const __half* hs = reinterpret_cast<const __half*>(rec0 + ((r & 1) + 8 * (r >> 1)) * rb);
    // zero latents past the range: 0 * (code) + 0
    sc[r] = ok[r] ? __ldg(hs) : __float2half_rn(0.0f);
    ze[r] = ok[r] ? __ldg(hs + 1) : __float2half_rn(0.0f);
  }
  const __half2 sab = __halves2half2(sc[0], sc[1]), zab = __halves2half2(ze[0], ze[1]);
  const __half2 scd = __halves2half2(sc[2], sc[3]), zcd = __halves2half2(ze[2], ze[3]);
#pragma unroll
  for (int ch = 0; ch < NC; ++ch) {
    unsigned w[4][NW];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      if (ok[r]) {
        load_run<CC>(rec0 + ((r & 1) + 8 * (r >> 1)) * rb + 4 + CB * g + CC * ch, w[r]);
      } else {
#pragma unroll
        for (int k = 0; k < NW; ++k) w[r][k] = 0u;
      }
    }
#pragma unroll
    for (int i = 0; i < MC; ++i) {
      const unsigned a[4] = {h2_bits(__hfma2(code_pair2<LB>(w[0], w[1], 2 * i), sab, zab)),
                             h2_bits(__hfma2(code_pair2<LB>(w[0], w[1], 2 * i + 1), sab, zab)),
                             h2_bits(__hfma2(code_pair2<LB>(w[2], w[3], 2 * i), scd, zcd)),
                             h2_bits(__hfma2(code_pair2<LB>(w[2], w[3], 2 * i + 1), scd, zcd))};
      mma16816(o[MC * ch + i], a, pb0, pb1);
    }
  }
}

// O_lat^T [VR x 8 heads] += Z^T P^T for tokens ja, ja + 1, ja + 8, ja + 9 (zeros from t_hi on).
// 16-bit latents: the record's fp16 z read as half2 words (chunks of up to 4 words per token).
template <int VR>
__device__ __forceinline__ void values_latent(const packed_kv_view& kv, std::int64_t slot, int p0,
                                              int ja, int t_hi, int g, unsigned pb0, unsigned pb1,
                                              float (*o)[4]) {
  constexpr int MT = VR / 16;
  const int lb = kv.v_latent_bits;  // 16 / 8 / 4, uniform
  const std::int64_t rb = static_cast<std::int64_t>(latent_record_bytes_of(VR, lb));
  // Record of token ja + (r & 1) + 8 (r >> 1): rec0 + rec_off(r); read only where ok[r].
  const std::uint8_t* rec0 = kv.v_rec + (slot * kv.v_slot_records + p0 + ja) * rb;
  const int rbi = static_cast<int>(rb);
  bool ok[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) ok[r] = p0 + ja + (r & 1) + 8 * (r >> 1) < t_hi;
  if (lb == 16) {
    constexpr int CW = MT % 4 == 0 ? 4 : MT % 2 == 0 ? 2 : 1;  // words per load (alignment)
#pragma unroll
    for (int i0 = 0; i0 < MT; i0 += CW) {
      unsigned x[4][CW];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const std::uint8_t* src = rec0 + ((r & 1) + 8 * (r >> 1)) * rbi + 4 * MT * g + 4 * i0;
        if constexpr (CW == 4) {
          const uint4 v =
              ok[r] ? __ldg(reinterpret_cast<const uint4*>(src)) : make_uint4(0, 0, 0, 0);
          x[r][0] = v.x, x[r][1] = v.y, x[r][2] = v.z, x[r][3] = v.w;
        } else if constexpr (CW == 2) {
          const uint2 v = ok[r] ? __ldg(reinterpret_cast<const uint2*>(src)) : make_uint2(0, 0);
          x[r][0] = v.x, x[r][1] = v.y;
        } else {
          x[r][0] = ok[r] ? __ldg(reinterpret_cast<const unsigned*>(src)) : 0u;
        }
      }
#pragma unroll
      for (int k = 0; k < CW; ++k) {
        const unsigned a[4] = {
            __byte_perm(x[0][k], x[1][k], 0x5410), __byte_perm(x[0][k], x[1][k], 0x7632),
            __byte_perm(x[2][k], x[3][k], 0x5410), __byte_perm(x[2][k], x[3][k], 0x7632)};
        mma16816(o[i0 + k], a, pb0, pb1);
      }
    }
  } else if (lb == 8) {
    values_latent_q<VR, 8>(rec0, rbi, ok, g, pb0, pb1, o);
  } else {
    values_latent_q<VR, 4>(rec0, rbi, ok, g, pb0, pb1, o);
  }
}

// S^T of one 32-token tile (two m-tiles) into sacc: keys from the K stage (QUANT: the tile lies in
// one record) or from the fp16 window (zeros past n), rotated by their in-tile angle.
template <int BITS, bool QUANT>
__device__ __forceinline__ void key_scores(const packed_kv_view& kv, std::int64_t slot, int p0,
                                           int n, const std::uint8_t* stk, const uint2* rope_s,
                                           int lane, const unsigned (*qb)[2], float (*sacc)[4]) {
  const int g = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int kq = 0; kq < 2; ++kq) {
    // Scale / zero pairs in the stage: word 8t + 4kq + u holds channels 16t + 2kk (+1) for
    // kk = 4kq + u, + 32 words their partners, + 64 the zeros (4-byte reads, conflict-free).
    const unsigned* scw = reinterpret_cast<const unsigned*>(stk) + 8 * t4 + 4 * kq;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      const int j0 = 16 * mt + g, j1 = j0 + 8;
      __half2 lo0[4], hi0[4], lo1[4], hi1[4];  // pre-RoPE keys: pairs kk = 4kq + u
      if constexpr (QUANT && BITS != 16) {
        // 8 codes (BITS bytes) per token and half: channels 16t + 8kq + [0, 8) (+ 64).
        const std::uint8_t* codes = stk + 4 * D + (16 * t4 + 8 * kq) * BITS / 8;
        const unsigned k3s = 8u * ((2u * t4 + 3u * kq) & 3u);  // 3 bits: 8 (codes mod 4)
        unsigned c00[BITS == 8 ? 2 : 1], c01[BITS == 8 ? 2 : 1], c10[BITS == 8 ? 2 : 1],
            c11[BITS == 8 ? 2 : 1];
        load_k_codes<BITS>(codes + j0 * D * BITS / 8, k3s, c00);
        load_k_codes<BITS>(codes + j0 * D * BITS / 8 + HALF * BITS / 8, k3s, c01);
        load_k_codes<BITS>(codes + j1 * D * BITS / 8, k3s, c10);
        load_k_codes<BITS>(codes + j1 * D * BITS / 8 + HALF * BITS / 8, k3s, c11);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const __half2 sl = as_h2(scw[u]), sh = as_h2(scw[32 + u]);
          const __half2 zl = as_h2(scw[64 + u]), zh = as_h2(scw[96 + u]);
          lo0[u] = __hfma2(code_pair<BITS>(c00, u), sl, zl);
          hi0[u] = __hfma2(code_pair<BITS>(c01, u), sh, zh);
          lo1[u] = __hfma2(code_pair<BITS>(c10, u), sl, zl);
          hi1[u] = __hfma2(code_pair<BITS>(c11, u), sh, zh);
        }
      } else {
        uint4 w[4] = {};  // (token j0, lo), (j0, hi), (j1, lo), (j1, hi); zeros past n
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int t = p0 + (r == 0 ? j0 : j1);
          if (t < n) {
            const __half* row =
                kv.k_win + (slot * kv.win_cap + t % kv.win_cap) * D + 16 * t4 + 8 * kq;
            w[2 * r] = __ldg(reinterpret_cast<const uint4*>(row));
            w[2 * r + 1] = __ldg(reinterpret_cast<const uint4*>(row + HALF));
          }
        }
        lo0[0] = as_h2(w[0].x), lo0[1] = as_h2(w[0].y), lo0[2] = as_h2(w[0].z),
        lo0[3] = as_h2(w[0].w);
        hi0[0] = as_h2(w[1].x), hi0[1] = as_h2(w[1].y), hi0[2] = as_h2(w[1].z),
        hi0[3] = as_h2(w[1].w);
        lo1[0] = as_h2(w[2].x), lo1[1] = as_h2(w[2].y), lo1[2] = as_h2(w[2].z),
        lo1[3] = as_h2(w[2].w);
        hi1[0] = as_h2(w[3].x), hi1[1] = as_h2(w[3].y), hi1[2] = as_h2(w[3].z),
        hi1[3] = as_h2(w[3].w);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const uint2 r0 = rope_s[((2 * mt) * 8 + 4 * kq + u) * 32 + lane];
        const uint2 r1 = rope_s[((2 * mt + 1) * 8 + 4 * kq + u) * 32 + lane];
        unsigned a[4];
        rotate(lo0[u], hi0[u], r0.x, r0.y, a[0], a[2]);
        rotate(lo1[u], hi1[u], r1.x, r1.y, a[1], a[3]);
        mma16816(sacc[mt], a, qb[4 * kq + u][0], qb[4 * kq + u][1]);
      }
    }
  }
}

// ---- K latent mode (packed_kv_view::k_latent_rank, PCA / linear-AE keys) ----------------------
// Reconstruct-then-rotate on tensor cores: per 16-token m-tile, K [16 tok x 128 ch] =
// Z [16 x KL] * dec_w^T [KL x 128] + dec_b, 16 n-tiles of 8 channels ordered so that the C
// fragment of n-tile (kk, lo) holds, in lane (g, t), token g / g + 8 at channels 16t + 2kk (+1)
// and n-tile (kk, hi) their RoPE partners + 64: packed to half2 these are exactly the key A
// fragment of k-chunk kk of key_scores (lo0 / lo1 / hi0 / hi1), rotated and fed to the score mma.
// The latent (k) dimension is permuted so that a lane reads one contiguous run per token: k-step
// ks, k-index 2t + e -> latent KL / 4 t + 4 ks + e, 2t + 8 + e -> KL / 4 t + 4 ks + 2 + e.

// Bytes of the K latent tables in shared memory: dec_w^T B fragments, uint4 [8 kk][KL / 16 ks]
// [32 lanes] = (lo b0, lo b1, hi b0, hi b1) (16-byte reads by the warp, conflict-free), then
// dec_b fp32 [D].
constexpr __host__ __device__ int kl_table_bytes(int kl) {
  return kl * 256 + D * 4;
}

// Fills the tables of KV head kvh (all threads of the CTA; the caller syncs).
template <int KL>
__device__ __forceinline__ void fill_k_latent_tables(const packed_kv_view& kv, int kvh, uint4* fr,
                                                     float* db) {
  constexpr int KS = KL / 16;
  const float* w = kv.k_dec_w + static_cast<std::int64_t>(kvh) * D * KL;  // [D, KL]
  for (int i = threadIdx.x; i < 8 * KS * 32 * 4; i += blockDim.x) {
    const int comp = i % 4, ln = (i / 4) % 32, ks = (i / 128) % KS, kk = i / (128 * KS);
    const int g = ln / 4, t = ln % 4;
    // B column g of n-tile (kk, lo / hi): channel 16 (g / 2) + 2kk + g % 2 (+ 64).
    const int ch = 16 * (g / 2) + 2 * kk + g % 2 + (comp >= 2 ? HALF : 0);
    const int l0 = KL / 4 * t + 4 * ks + ((comp & 1) ? 2 : 0);
    reinterpret_cast<unsigned*>(fr)[i] =
        pack_half2(__ldg(w + ch * KL + l0), __ldg(w + ch * KL + l0 + 1));
  }
  for (int c = threadIdx.x; c < D; c += blockDim.x)
    db[c] = __ldg(kv.k_dec_b + static_cast<std::int64_t>(kvh) * D + c);
}

// The lane's latent run of one token (latents [KL / 4 t, KL / 4 t + KL / 4)) as KL / 8 half2:
// 16-bit latents read as they are, 8 / 4-bit ones as code * scale + zero (one HFMA2, the V latent
// path's arithmetic); zeros when !ok.
template <int KL, int LB>
__device__ __forceinline__ void k_latent_run(const std::uint8_t* rec, bool ok, int t, unsigned* z) {
  constexpr int NP = KL / 8;  // half2 pairs per lane and token
  if constexpr (LB == 16) {
    if (ok) {
      load_words<KL / 2>(rec + KL / 2 * t, z);  // 8 / 16 / 32 / 48 / 64 bytes, aligned
    } else {
#pragma unroll
      for (int i = 0; i < NP; ++i) z[i] = 0u;
    }
  } else {
    constexpr int CB = KL / 4 * LB / 8;  // code bytes per lane and token
    unsigned w[(CB + 3) / 4];
    __half2 sc = __float2half2_rn(0.0f), ze = sc;
    if (ok) {
      const __half* hs = reinterpret_cast<const __half*>(rec);
      sc = __half2half2(__ldg(hs));
      ze = __half2half2(__ldg(hs + 1));
      load_run<CB>(rec + 4 + CB * t, w);
    } else {
#pragma unroll
      for (int i = 0; i < (CB + 3) / 4; ++i) w[i] = 0u;
    }
#pragma unroll
    for (int i = 0; i < NP; ++i)
      z[i] = h2_bits(__hfma2(code_pair<LB>(w + (i / 4) * (LB / 4), i % 4), sc, ze));
  }
}

// S^T of one 32-token tile from latent K records (tokens >= t_hi: zero latents, masked later):
// per m-tile the Z A fragments once, then per k-chunk kk the two n-tiles (kk, lo / hi) of the
// reconstruction (KL / 8 mma), the rotation and the score mma of key_scores.
template <int KL, int LB>
__device__ __forceinline__ void key_scores_latent(const packed_kv_view& kv, std::int64_t slot,
                                                  int p0, int t_hi, const uint4* fr,
                                                  const float* db, const uint2* rope_s, int lane,
                                                  const unsigned (*qb)[2], float (*sacc)[4]) {
  constexpr int KS = KL / 16, NP = KL / 8;
  const int g = lane / 4, t4 = lane % 4;
  const std::int64_t rb = static_cast<std::int64_t>(latent_record_bytes_of(KL, LB));
  // Latents of tokens g, g + 8 of m-tile mt into a, b.
  const auto load = [&](int mt, unsigned* za, unsigned* zb) {
    const int j0 = p0 + 16 * mt + g, j1 = j0 + 8;
    k_latent_run<KL, LB>(kv.k_rec + (slot * kv.k_slot_records + j0) * rb, j0 < t_hi, t4, za);
    k_latent_run<KL, LB>(kv.k_rec + (slot * kv.k_slot_records + j1) * rb, j1 < t_hi, t4, zb);
  };
  // Ranks <= 32: the second m-tile's latents are loaded before the first's reconstruction (their
  // latency hidden behind it; 2 KL / 4 more registers, no spills).
  constexpr bool PF = KL <= 32;
  unsigned z0[NP], z1[NP], n0[PF ? NP : 1], n1[PF ? NP : 1];
  load(0, z0, z1);
  if constexpr (PF) load(1, n0, n1);
    // One m-tile at a time (not unrolled: two in flight spill at 128 registers); its scores in
    // sc, moved to sacc[mt] with constant indices.
#pragma unroll 1
  for (int mt = 0; mt < 2; ++mt) {
    float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if constexpr (!PF) {
      if (mt == 1) load(1, z0, z1);
    }
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
      const float2 bl = *reinterpret_cast<const float2*>(db + 16 * t4 + 2 * kk);
      const float2 bh = *reinterpret_cast<const float2*>(db + HALF + 16 * t4 + 2 * kk);
      float cl[4] = {bl.x, bl.y, bl.x, bl.y}, ch[4] = {bh.x, bh.y, bh.x, bh.y};
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        const uint4 f = fr[(kk * KS + ks) * 32 + lane];
        const unsigned a[4] = {z0[2 * ks], z1[2 * ks], z0[2 * ks + 1], z1[2 * ks + 1]};
        mma16816(cl, a, f.x, f.y);
        mma16816(ch, a, f.z, f.w);
      }
      const uint2 r0 = rope_s[((2 * mt) * 8 + kk) * 32 + lane];
      const uint2 r1 = rope_s[((2 * mt + 1) * 8 + kk) * 32 + lane];
      unsigned a[4];
      rotate(as_h2(pack_half2(cl[0], cl[1])), as_h2(pack_half2(ch[0], ch[1])), r0.x, r0.y, a[0],
             a[2]);
      rotate(as_h2(pack_half2(cl[2], cl[3])), as_h2(pack_half2(ch[2], ch[3])), r1.x, r1.y, a[1],
             a[3]);
      mma16816(sc, a, qb[kk][0], qb[kk][1]);
      // Keeps the next chunk's table loads after this one (hoisting them all costs registers).
      asm volatile("" ::: "memory");
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (mt == 0)
        sacc[0][e] = sc[e];
      else
        sacc[1][e] = sc[e];
    }
    if constexpr (PF) {
#pragma unroll
      for (int i = 0; i < NP; ++i) z0[i] = n0[i], z1[i] = n1[i];
    }
  }
}

// grid (splits, n_kv * ceil(G / 8), B), block 32 * kWarps, dynamic smem rd_stage<BITS>::smem.
// VM (V mode): 0 = every token, V as KIVI records of BITS bits / the fp16 ring (bits 16: all
// ring); VR > 0 = the V latent mode's compressed range [0, min(n, v_compressed)), latents of
// rank VR, the CTA's partial projected through dec_w at the end; -1 = the latent mode's window
// range [v_compressed, n), fp16 V, its partials after the latent ones (n_parts - gridDim.x on).
// BITS_V: the V records' width (VM 0 only; <= BITS, the K width).
// KL (K latent rank, VM > 0 and BITS 16 only): 0 = K from the ring / KIVI records; > 0 = K of the
// compressed range from latent records (key_scores_latent; the K and V compressed ranges are the
// same, v_compressed), the tables after the warps' stages in `area`.
template <int BITS, int GROUP, int VM, int BITS_V = BITS, int KL = 0>
__global__ void __launch_bounds__(32 * kWarps, KVCAL_RD_MIN_BLOCKS)
    decode_attention_rd_kernel(decode_attention_params p, int tiles_per_split, int n_parts,
                               int stage_k, int stage_v) {
  static_assert(KL == 0 || (VM > 0 && BITS == 16 && KL % 16 == 0 && KL <= D), "K latent mode");
  constexpr int NO = VM > 0 ? VM / 16 : 8;    // O^T m-tiles (value or latent channels / 16)
  constexpr bool QV = BITS != 16 && VM == 0;  // KIVI V records (the V stage)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* qs = reinterpret_cast<float*>(smem_raw);  // [kHeads][kQRow], scaled
  uint2* rope_s = reinterpret_cast<uint2*>(smem_raw + kQBytes);
  unsigned char* area = smem_raw + kQBytes + kRopeBytes;

  const packed_kv_view& kv = p.kv;
  const int b = blockIdx.z;
  const int gq = p.n_heads / kv.n_kv, n_hg = (gq + kHeads - 1) / kHeads;
  const int kvh = static_cast<int>(blockIdx.y) / n_hg, hg = static_cast<int>(blockIdx.y) % n_hg;
  const int head0 = kvh * gq + hg * kHeads, nh = min(kHeads, gq - hg * kHeads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const std::int64_t slot = static_cast<std::int64_t>(b) * kv.n_kv + kvh;
  const int n = kv.n_tokens[b];
  const int kc = BITS == 16 ? 0 : kv.k_compressed[b];
  const int vc = BITS == 16 && VM == 0 ? 0 : kv.v_compressed[b];
  const int ng = QV ? D / kv.v_group : 1, vgrp = QV ? 16 * g / kv.v_group : 0;
  const int v_rb = rd_stage<BITS, BITS_V>::v_rec_bytes(ng);
  const bool rotated = BITS == 16 && kv.keys_rotated;  // keys and queries already after RoPE
  const bool a16 =
      ((reinterpret_cast<std::uintptr_t>(p.rope_cos) |
        reinterpret_cast<std::uintptr_t>(p.rope_sin) | reinterpret_cast<std::uintptr_t>(kv.k_rec)) &
       15u) == 0;
  std::uint8_t* stk = area + static_cast<std::size_t>(warp) * (stage_k + stage_v);
  std::uint8_t* stv = stk + stage_k;

  // Token range [t_lo, t_hi) of this CTA's kind (VM) and its tiles [base, tile_end).
  int t_lo = 0, t_hi = n, base = static_cast<int>(blockIdx.x) * tiles_per_split;
  if constexpr (VM > 0) t_hi = min(n, vc);
  if constexpr (VM < 0) {
    t_lo = vc;
    t_hi = vc < n ? n : 0;  // an empty window: no tile (a fully masked tile would give NaN)
    base += vc / kTile;
  }
  const int n_tiles = (t_hi + kTile - 1) / kTile;
  const int tile_end = min(n_tiles, base + tiles_per_split);
  const int tile0 = base + warp;
  const int vcs = QV ? vc : 0;  // V stage range
  // The first tile's stages go out before the setup so that their latency overlaps it.
  issue_k<BITS, GROUP>(kv, slot, tile0 * kTile, tile0 < tile_end, kc, p.rope_cos, p.rope_sin,
                       rotated, a16, stk, lane);
  issue_v(kv, slot, tile0 * kTile, tile0 < tile_end, vcs, v_rb, stv, lane);

  // Queries (scaled by softmax_scale * log2(e); zero rows past the group) and the lane RoPE rows
  // (keys_rotated: identity rows, cos 1 and sin 0 rotate exactly, in the stage and in rope_s).
  // RoPE's attention scaling divides the rotated query; it is linear, so it goes in here.
  const float qscale =
      p.softmax_scale * 1.4426950408889634f / (rotated ? 1.0f : p.rope_attention_scaling);
#pragma unroll
  for (int k = 0; k < kHeads * D / (32 * kWarps); ++k) {
    const int i = threadIdx.x + k * 32 * kWarps, h = i / D, c = i % D;
    qs[h * kQRow + c] =
        h < nh
            ? __ldg(p.q + (static_cast<std::int64_t>(b) * p.n_heads + head0 + h) * D + c) * qscale
            : 0.0f;
  }
  if (rotated) {
    float* r = reinterpret_cast<float*>(stk + rd_stage<BITS>::k_rope);
    for (int i = lane; i < 2 * HALF; i += 32) r[i] = i < HALF ? 1.0f : 0.0f;
  }
#pragma unroll
  for (int k = 0; k < 4 * 8 * 32 / (32 * kWarps); ++k) {
    const int e = threadIdx.x + k * 32 * kWarps;  // (o, kk, lane)
    const int el = e % 32, kk = (e / 32) % 8, o = e / 256;
    // Offset o: in-tile token 16 (o / 2) + 8 (o % 2) + g of lane el; channels 16t + 2kk (+1).
    const int j = 16 * (o >> 1) + 8 * (o & 1) + el / 4, f = 16 * (el % 4) + 2 * kk;
    if (rotated) {
      rope_s[e] = make_uint2(h2_bits(__float2half2_rn(1.0f)), h2_bits(__float2half2_rn(0.0f)));
    } else {
      const float* c = p.rope_cos + j * HALF + f;  // tables: 4-byte alignment suffices
      const float* s = p.rope_sin + j * HALF + f;
      rope_s[e] = make_uint2(h2_bits(__floats2half2_rn(__ldg(c), __ldg(c + 1))),
                             h2_bits(__floats2half2_rn(__ldg(s), __ldg(s + 1))));
    }
  }
  // K latent tables after the stages (the end-of-CTA reduction may overwrite them).
  [[maybe_unused]] uint4* const kl_fr =
      reinterpret_cast<uint4*>(area + kWarps * (stage_k + stage_v));
  [[maybe_unused]] float* const kl_db =
      reinterpret_cast<float*>(area + kWarps * (stage_k + stage_v) + KL * 256);
  if constexpr (KL > 0) fill_k_latent_tables<KL>(kv, kvh, kl_fr, kl_db);
  __syncthreads();

  // O^T: m-tile i, rows g / g + 8 = channels 2 NO g + 2i (+1) (16g + 2i at d 128), cols heads 2t
  // (+1); in the latent mode latent channels.
  float o[NO][4];
#pragma unroll
  for (int i = 0; i < NO; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // heads 2t, 2t + 1
  // Optional logits (log2 units, the values entering the softmax): row of head head0 + h is h.
  float* const logits =
      p.logits == nullptr
          ? nullptr
          : p.logits + (static_cast<std::int64_t>(b) * p.n_heads + head0) * p.max_tokens;
  const float* qrow = qs + g * kQRow;

  for (int tile = tile0; tile < tile_end; tile += kWarps) {
    const int p0 = tile * kTile;
    const bool has_next = tile + kWarps < tile_end;
    cp_async_wait1();  // this tile's K stage (its V stage may still be in flight)
    __syncwarp();
    // 1. Q^T B fragments of head g rotated by the tile angle (RoPE rows of p0 from the K stage):
    //    b0 = channels 16t + 2kk (+1), b1 = their partners (fp32 rotation, as the other kernels).
    unsigned qb[8][2];
    {
      const float* cos0 = reinterpret_cast<const float*>(stk + rd_stage<BITS>::k_rope);
      const float* sin0 = cos0 + HALF;
#pragma unroll
      for (int q4 = 0; q4 < 4; ++q4) {
        const int f = 16 * t4 + 4 * q4;
        const float4 c = *reinterpret_cast<const float4*>(cos0 + f);
        const float4 s = *reinterpret_cast<const float4*>(sin0 + f);
        const float4 x = *reinterpret_cast<const float4*>(qrow + f);
        const float4 y = *reinterpret_cast<const float4*>(qrow + HALF + f);
        qb[2 * q4][0] = pack_half2(x.x * c.x + y.x * s.x, x.y * c.y + y.y * s.y);
        qb[2 * q4][1] = pack_half2(y.x * c.x - x.x * s.x, y.y * c.y - x.y * s.y);
        qb[2 * q4 + 1][0] = pack_half2(x.z * c.z + y.z * s.z, x.w * c.w + y.w * s.w);
        qb[2 * q4 + 1][1] = pack_half2(y.z * c.z - x.z * s.z, y.w * c.w - x.w * s.w);
      }
    }
    // 2. S^T: m-tile mt holds tokens 16mt + g (rows g) and 16mt + g + 8 (rows g + 8). A tile is
    //    all records (p0 < k_compressed, a multiple of k_group >= 32) or all window.
    float sacc[2][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) sacc[mt][0] = sacc[mt][1] = sacc[mt][2] = sacc[mt][3] = 0.0f;
    if constexpr (KL > 0) {  // every tile of the range [0, t_hi) holds latent keys
      if (kv.k_latent_bits == 16)
        key_scores_latent<KL, 16>(kv, slot, p0, t_hi, kl_fr, kl_db, rope_s, lane, qb, sacc);
      else if (kv.k_latent_bits == 8)
        key_scores_latent<KL, 8>(kv, slot, p0, t_hi, kl_fr, kl_db, rope_s, lane, qb, sacc);
      else
        key_scores_latent<KL, 4>(kv, slot, p0, t_hi, kl_fr, kl_db, rope_s, lane, qb, sacc);
    } else if (p0 < kc) {
      key_scores<BITS, true>(kv, slot, p0, n, stk, rope_s, lane, qb, sacc);
    } else {
      key_scores<BITS, false>(kv, slot, p0, n, stk, rope_s, lane, qb, sacc);
    }
    __syncwarp();
    issue_k<BITS, GROUP>(kv, slot, p0 + kWarps * kTile, has_next, kc, p.rope_cos, p.rope_sin,
                         rotated, a16, stk, lane);  // K stage consumed

    // 3. Mask, optional logits (this CTA's tokens only), online softmax: heads 2t + e over the
    //    lanes of the same t.
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int tok = p0 + 16 * mt + g + 8 * (e >> 1), h = 2 * t4 + (e & 1);
        if (tok >= t_hi || (VM < 0 && tok < t_lo))
          sacc[mt][e] = -INFINITY;
        else if (logits != nullptr && h < nh)
          logits[static_cast<std::int64_t>(h) * p.max_tokens + tok] = sacc[mt][e];
      }
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float mx = fmaxf(fmaxf(sacc[0][hh], sacc[0][2 + hh]), fmaxf(sacc[1][hh], sacc[1][2 + hh]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
      const float m_new = fmaxf(m[hh], mx);  // finite: a token of [t_lo, t_hi) is in the tile
      const float alpha = exp2f(m[hh] - m_new);
      float sum = 0.0f;
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int e = hh; e < 4; e += 2) {
          sacc[mt][e] = exp2f(sacc[mt][e] - m_new);
          sum += sacc[mt][e];
        }
      l[hh] = l[hh] * alpha + sum;  // this lane's tokens; summed over the lanes of t at the end
      m[hh] = m_new;
#pragma unroll
      for (int i = 0; i < NO; ++i) {
        o[i][hh] *= alpha;
        o[i][2 + hh] *= alpha;
      }
    }

    // 4. O^T += V^T P^T per k-chunk of 16 tokens (the scores' m-tile kc2).
    cp_async_wait1();  // this tile's V stage (the next K stage may still be in flight)
    __syncwarp();
    const bool all_records = p0 + kTile <= vc;  // warp-uniform
#pragma unroll
    for (int kc2 = 0; kc2 < 2; ++kc2) {
      const unsigned pb0 = movmatrix_trans(pack_half2(sacc[kc2][0], sacc[kc2][1]));
      const unsigned pb1 = movmatrix_trans(pack_half2(sacc[kc2][2], sacc[kc2][3]));
      const int ja = 16 * kc2 + 2 * t4;  // tokens ja, ja + 1 (k 2t, 2t + 1), ja + 8, ja + 9
      if constexpr (VM > 0) {
        values_latent<VM>(kv, slot, p0, ja, t_hi, g, pb0, pb1, o);
      } else if constexpr (!QV) {
        values_fp16(kv, slot, p0, ja, t_lo, t_hi, g, pb0, pb1, o);
      } else if (all_records) {
        // Codes of the 4 tokens kept packed; each A register is one HFMA2 of the two tokens'
        // codes (interleaved) with their (scale, scale) and (zero, zero).
        unsigned w[4][v_run_words<BITS_V>];
        __half2 sab, zab, scd, zcd;
        {
          __half sc[4], ze[4];
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            const std::uint8_t* rec = stv + (ja + (r & 1) + 8 * (r >> 1)) * v_rb;
            const __half* hs = reinterpret_cast<const __half*>(rec);
            sc[r] = hs[vgrp];
            ze[r] = hs[ng + vgrp];
            // 16 codes = 2 * BITS_V bytes; records are only 4-byte aligned in the stage.
            load_v_run<BITS_V>(rec + 4 * ng, g, w[r]);
          }
          sab = __halves2half2(sc[0], sc[1]), zab = __halves2half2(ze[0], ze[1]);
          scd = __halves2half2(sc[2], sc[3]), zcd = __halves2half2(ze[2], ze[3]);
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const unsigned a[4] = {
              h2_bits(__hfma2(v_code_pair2<BITS_V>(w[0], w[1], 2 * i), sab, zab)),
              h2_bits(__hfma2(v_code_pair2<BITS_V>(w[0], w[1], 2 * i + 1), sab, zab)),
              h2_bits(__hfma2(v_code_pair2<BITS_V>(w[2], w[3], 2 * i), scd, zcd)),
              h2_bits(__hfma2(v_code_pair2<BITS_V>(w[2], w[3], 2 * i + 1), scd, zcd))};
          mma16816(o[i], a, pb0, pb1);
        }
      } else {
        // Tiles with window tokens or past n_tokens: one token pair at a time (rows k 2t, 2t + 1,
        // then 2t + 8, 2t + 9; the other half of the fragment zero), fewer live registers.
#pragma unroll
        for (int hp = 0; hp < 2; ++hp) {
          unsigned va[8], vb[8];
          const int j = ja + 8 * hp;
          value_run<BITS_V>(kv, slot, p0 + j, n, vc, stv + j * v_rb, ng, vgrp, g, va);
          value_run<BITS_V>(kv, slot, p0 + j + 1, n, vc, stv + (j + 1) * v_rb, ng, vgrp, g, vb);
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            // channel 16g + 2i of tokens (j, j + 1), then channel + 1.
            const unsigned lo = __byte_perm(va[i], vb[i], 0x5410);
            const unsigned hi = __byte_perm(va[i], vb[i], 0x7632);
            const unsigned a[4] = {hp == 0 ? lo : 0u, hp == 0 ? hi : 0u, hp == 0 ? 0u : lo,
                                   hp == 0 ? 0u : hi};
            mma16816(o[i], a, pb0, pb1);
          }
        }
      }
    }
    __syncwarp();
    issue_v(kv, slot, p0 + kWarps * kTile, has_next, vcs, v_rb, stv, lane);  // V consumed
  }

  // Merge the 4 warps' states in smem (the stages are free now), one partial per CTA and head:
  // workspace [B, n_heads, n_parts] x (m, l), then x D (the layout of decode_attention.cu).
  cp_async_wait_all();  // only empty groups are left; no copy outlives the CTA
  __syncthreads();
  float* red_o = reinterpret_cast<float*>(area);  // [kWarps][kHeads][D] (first 16 NO columns)
  float* red_ml = qs;                             // [kWarps][kHeads][2]
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    float lh = l[hh];
    lh += __shfl_xor_sync(0xffffffffu, lh, 4);
    lh += __shfl_xor_sync(0xffffffffu, lh, 8);
    lh += __shfl_xor_sync(0xffffffffu, lh, 16);
    const int h = 2 * t4 + hh;
    if (g == 0) {
      red_ml[(warp * kHeads + h) * 2] = m[hh];
      red_ml[(warp * kHeads + h) * 2 + 1] = lh;
    }
#pragma unroll
    for (int i = 0; i < NO; ++i) {
      red_o[(warp * kHeads + h) * D + 2 * NO * g + 2 * i] = o[i][hh];
      red_o[(warp * kHeads + h) * D + 2 * NO * g + 2 * i + 1] = o[i][2 + hh];
    }
  }
  __syncthreads();
  const int part = VM < 0 ? n_parts - static_cast<int>(gridDim.x) + static_cast<int>(blockIdx.x)
                          : static_cast<int>(blockIdx.x);
  float* ws_ml = static_cast<float*>(p.workspace);
  float* ws_acc = ws_ml + static_cast<std::int64_t>(kv.batch) * p.n_heads * n_parts * 2;
  constexpr int W = 16 * NO;  // columns merged: D, or the latent rank
  // Latent mode: the merged latent partial zs [kHeads][W] and (max, den) [kHeads][2] go to the
  // free RoPE rows, then acc = dec_w zs + den dec_b (fp32, the order of the pipelined kernel's
  // latent_partial_out) is the CTA's ordinary D-wide partial.
  float* zs = reinterpret_cast<float*>(rope_s);
  float* stats = zs + kHeads * W;
  for (int i = threadIdx.x; i < nh * W; i += blockDim.x) {
    const int h = i / W, c = i % W;
    float num, den;
    const float mx = merge_warp_partials<kWarps, kHeads>(red_o, red_ml, D, h, c, num, den);
    if constexpr (VM > 0) {
      zs[h * W + c] = num;
      if (c == 0) {
        stats[2 * h] = mx;
        stats[2 * h + 1] = den;
      }
    } else {
      const std::int64_t row =
          (static_cast<std::int64_t>(b) * p.n_heads + head0 + h) * n_parts + part;
      ws_acc[row * D + c] = num;
      if (c == 0) {
        ws_ml[2 * row] = mx;
        ws_ml[2 * row + 1] = den;
      }
    }
  }
  if constexpr (VM > 0) {
    __syncthreads();
    const float* dw = kv.v_dec_w + static_cast<std::int64_t>(kvh) * D * VM;  // [D, VM]
    const float* db = kv.v_dec_b + static_cast<std::int64_t>(kvh) * D;
    for (int i = threadIdx.x; i < nh * D; i += blockDim.x) {
      const int h = i / D, c = i % D;
      const float den = stats[2 * h + 1];
      float acc = den * __ldg(db + c);
#pragma unroll 8  // fully unrolled, rank 128 spills (ptxas keeps 32 float4 loads in flight)
      for (int r4 = 0; r4 < VM; r4 += 4) {
        const float4 w = __ldg(reinterpret_cast<const float4*>(dw + c * VM + r4));
        acc += w.x * zs[h * W + r4] + w.y * zs[h * W + r4 + 1] + w.z * zs[h * W + r4 + 2] +
               w.w * zs[h * W + r4 + 3];
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
}

// Dynamic shared memory of a launch: rd_stage::smem, or with the K latent tables after the
// stages (KL > 0; 47 KB at rank 128, still 4 CTAs per SM).
template <int BITS, int BITS_V, int KL>
constexpr int rd_smem(int vb) {
  using ST = rd_stage<BITS, BITS_V>;
  if constexpr (KL == 0) {
    return ST::smem(vb);
  } else {
    const int st = kWarps * (ST::k_bytes + vb) + kl_table_bytes(KL), red = kWarps * kHeads * D * 4;
    return kQBytes + kRopeBytes + (st > red ? st : red);
  }
}

template <int BITS, int GROUP, int VM, int BITS_V = BITS, int KL = 0>
cudaError_t run_rd(const decode_attention_params& p, int grid_x, int tiles_per_split, int n_parts,
                   cudaStream_t stream) {
  using ST = rd_stage<BITS, BITS_V>;
  constexpr bool QV = BITS != 16 && VM == 0;
  const int vb = QV ? ST::v_bytes(D / p.kv.v_group) : 0;
  constexpr int vb_max = QV ? ST::v_bytes(D / 16) : 0;  // the largest: V group 16
  const int gq = p.n_heads / p.kv.n_kv, n_hg = (gq + kHeads - 1) / kHeads;
  static const cudaError_t attr = cudaFuncSetAttribute(
      decode_attention_rd_kernel<BITS, GROUP, VM, BITS_V, KL>,
      cudaFuncAttributeMaxDynamicSharedMemorySize, rd_smem<BITS, BITS_V, KL>(vb_max));
  if (attr != cudaSuccess) return attr;
  if (grid_x <= 0) return cudaSuccess;
  decode_attention_rd_kernel<BITS, GROUP, VM, BITS_V, KL>
      <<<dim3(grid_x, p.kv.n_kv * n_hg, p.kv.batch), 32 * kWarps, rd_smem<BITS, BITS_V, KL>(vb),
         stream>>>(p, tiles_per_split, n_parts, ST::k_bytes, vb);
  return cudaGetLastError();
}

// V latent mode: the compressed range (rank VR) then the window range, disjoint partials.
template <int BITS, int GROUP, int VR>
cudaError_t run_rd_latent(const decode_attention_params& p, const rd_plan& sp,
                          cudaStream_t stream) {
  const cudaError_t e =
      run_rd<BITS, GROUP, VR>(p, sp.splits, sp.tiles_per_split, sp.n_parts, stream);
  if (e != cudaSuccess) return e;
  return run_rd<BITS, GROUP, -1>(p, sp.w_splits, sp.w_tiles_per_split, sp.n_parts, stream);
}

// K latent mode (rank R for K and V): the compressed range with latent K and V, then the window
// range exactly as in the V latent mode (fp16 K and V from the ring).
template <int R>
cudaError_t run_rd_k_latent(const decode_attention_params& p, const rd_plan& sp,
                            cudaStream_t stream) {
  const cudaError_t e =
      run_rd<16, 0, R, 16, R>(p, sp.splits, sp.tiles_per_split, sp.n_parts, stream);
  if (e != cudaSuccess) return e;
  return run_rd<16, 0, -1>(p, sp.w_splits, sp.w_tiles_per_split, sp.n_parts, stream);
}

template <int BITS, int GROUP>
cudaError_t run_mode(const decode_attention_params& p, const rd_plan& sp, cudaStream_t stream) {
  switch (p.kv.v_latent_rank) {
    case 0:
      if constexpr (BITS == 16)
        return run_rd<BITS, GROUP, 0>(p, sp.splits, sp.tiles_per_split, sp.n_parts, stream);
      return cudaErrorInvalidValue;  // not reached: dispatch_group runs quantized V itself
    case 16:
      return run_rd_latent<BITS, GROUP, 16>(p, sp, stream);
    case 32:
      return run_rd_latent<BITS, GROUP, 32>(p, sp, stream);
    case 64:
      return run_rd_latent<BITS, GROUP, 64>(p, sp, stream);
    case 96:
      return run_rd_latent<BITS, GROUP, 96>(p, sp, stream);
    default:
      return run_rd_latent<BITS, GROUP, 128>(p, sp, stream);
  }
}

// The latent mode's kernels read the K group at run time (GROUP 0): fewer instantiations.
template <int BITS>
cudaError_t dispatch_group(const decode_attention_params& p, const rd_plan& sp,
                           cudaStream_t stream) {
  if constexpr (BITS == 16) {
    return run_mode<BITS, 0>(p, sp, stream);
  } else {
    if (p.kv.v_latent_rank > 0) return run_mode<BITS, 0>(p, sp, stream);
    switch (p.kv.k_group) {
      case 32:
        return run_rd<BITS, 32, 0>(p, sp.splits, sp.tiles_per_split, sp.n_parts, stream);
      case 64:
        return run_rd<BITS, 64, 0>(p, sp.splits, sp.tiles_per_split, sp.n_parts, stream);
      default:
        return run_rd<BITS, 128, 0>(p, sp.splits, sp.tiles_per_split, sp.n_parts, stream);
    }
  }
}

// Quantized V of BITS_V bits under K of BITS bits (BITS_V <= BITS; no V latent mode).
template <int BITS, int BITS_V>
cudaError_t dispatch_group_mixed(const decode_attention_params& p, const rd_plan& sp,
                                 cudaStream_t stream) {
  switch (p.kv.k_group) {
    case 32:
      return run_rd<BITS, 32, 0, BITS_V>(p, sp.splits, sp.tiles_per_split, sp.n_parts, stream);
    case 64:
      return run_rd<BITS, 64, 0, BITS_V>(p, sp.splits, sp.tiles_per_split, sp.n_parts, stream);
    default:
      return run_rd<BITS, 128, 0, BITS_V>(p, sp.splits, sp.tiles_per_split, sp.n_parts, stream);
  }
}

}  // namespace

#ifndef KVCAL_RD_K_BITS
bool decode_attention_rd_supported(const decode_attention_params& p) {
  const packed_kv_view& kv = p.kv;
  if (kv.head_dim != D) return false;
  const auto rank_ok = [](int r) { return r == 16 || r == 32 || r == 64 || r == 96 || r == 128; };
  const auto lbits_ok = [](int b) { return b == 16 || b == 8 || b == 4; };
  if (kv.k_latent_rank != 0)  // K latent mode: with the V latent mode of the same rank only
    return rank_ok(kv.k_latent_rank) && kv.v_latent_rank == kv.k_latent_rank &&
           lbits_ok(kv.k_latent_bits) && lbits_ok(kv.v_latent_bits) && !kv.keys_rotated;
  const bool kq = (kv.k_bits == 2 || kv.k_bits == 3 || kv.k_bits == 4 || kv.k_bits == 8) &&
                  (kv.k_group == 32 || kv.k_group == 64 || kv.k_group == 128);
  if (kv.v_latent_rank != 0) {  // V latent mode: K fp16 or KIVI records
    const int r = kv.v_latent_rank, lb = kv.v_latent_bits;
    const bool rank = r == 16 || r == 32 || r == 64 || r == 96 || r == 128;
    return rank && (lb == 16 || lb == 8 || lb == 4) && (kv.k_bits == 16 || (kq && kv.k_bits != 3));
  }
  if (kv.k_bits == 16) return kv.v_bits == 16;  // fp16 ring, pre-RoPE or keys_rotated
  const bool vg = kv.v_group == 16 || kv.v_group == 32 || kv.v_group == 64 || kv.v_group == 128;
  // V bits <= K bits (the instantiated pairs; 3-bit K with 3- or 2-bit V).
  const bool vb = (kv.v_bits == 2 || kv.v_bits == 3 || kv.v_bits == 4 || kv.v_bits == 8) &&
                  kv.v_bits <= kv.k_bits;
  return kq && vb && vg;
}

cudaError_t launch_decode_attention_rd_partials(const decode_attention_params& p,
                                                const decode_attention_rd_plan& plan,
                                                cudaStream_t stream) {
  if (!decode_attention_rd_supported(p)) {
    set_launch_error("decode_attention (register_direct): unsupported shape");
    return cudaErrorInvalidValue;
  }
  switch (p.kv.k_latent_rank) {  // k_bits is unused in the K latent mode
    case 0:
      break;
    case 16:
      return run_rd_k_latent<16>(p, plan, stream);
    case 32:
      return run_rd_k_latent<32>(p, plan, stream);
    case 64:
      return run_rd_k_latent<64>(p, plan, stream);
    case 96:
      return run_rd_k_latent<96>(p, plan, stream);
    default:
      return run_rd_k_latent<128>(p, plan, stream);
  }
  // 3-bit K and mixed widths: the translation units decode_attention_rd_k{3,4,8}.cu.
  const bool mixed = p.kv.v_latent_rank == 0 && p.kv.v_bits != p.kv.k_bits;
  switch (p.kv.k_bits) {
    case 2:
      return dispatch_group<2>(p, plan, stream);
    case 3:
      return launch_decode_attention_rd_k<3>(p, plan, stream);
    case 4:
      if (mixed) return launch_decode_attention_rd_k<4>(p, plan, stream);
      return dispatch_group<4>(p, plan, stream);
    case 8:
      if (mixed) return launch_decode_attention_rd_k<8>(p, plan, stream);
      return dispatch_group<8>(p, plan, stream);
    default:
      return dispatch_group<16>(p, plan, stream);
  }
}
#else
// The instantiations of one K width (KVCAL_RD_K_BITS), included by decode_attention_rd_k*.cu:
// 3-bit K with V 3 / 2 bits (and no latent mode), else V narrower than K.
template <int K_BITS>
cudaError_t launch_decode_attention_rd_k(const decode_attention_params& p,
                                         const decode_attention_rd_plan& plan,
                                         cudaStream_t stream) {
  switch (p.kv.v_bits) {
    case 2:
      if constexpr (K_BITS > 2) return dispatch_group_mixed<K_BITS, 2>(p, plan, stream);
      break;
    case 3:
      if constexpr (K_BITS >= 3) return dispatch_group_mixed<K_BITS, 3>(p, plan, stream);
      break;
    case 4:
      if constexpr (K_BITS > 4) return dispatch_group_mixed<K_BITS, 4>(p, plan, stream);
      break;
    default:
      break;
  }
  set_launch_error("decode_attention (register_direct): K " + std::to_string(K_BITS) +
                   "-bit with V " + std::to_string(p.kv.v_bits) + "-bit is not instantiated");
  return cudaErrorInvalidValue;
}
template cudaError_t launch_decode_attention_rd_k<KVCAL_RD_K_BITS>(
    const decode_attention_params& p, const decode_attention_rd_plan& plan, cudaStream_t stream);
#endif

}  // namespace kvcal
