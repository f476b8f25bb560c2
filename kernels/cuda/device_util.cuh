// Device helpers shared by the CUDA kernels of kernels/cuda/: read-only loads of packed bytes,
// fp16 pack / unpack, tensor-core mma.sync m16n8k16 and ldmatrix, codes -> fp16 through the
// 0x6400 bit pattern, cp.async staging. Header-only (__forceinline__), included by .cu files.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace kvcal {
namespace cuda_dev {

// ---- loads --------------------------------------------------------------------------

// NB bytes at p (aligned to min(NB, 16)) as 32-bit words; NB = 2 fills the low half of w[0].
// Cache bytes are read-only during a launch: read-only loads (ld.global.nc) let the compiler
// issue the loads of all rounds of a tile before the shared-memory stores of the first.
template <int NB>
__device__ __forceinline__ void load_words(const std::uint8_t* p, unsigned* w) {
  if constexpr (NB == 2) {
    w[0] = __ldg(reinterpret_cast<const unsigned short*>(p));
  } else if constexpr (NB == 4) {
    w[0] = __ldg(reinterpret_cast<const unsigned*>(p));
  } else if constexpr (NB == 8) {
    const uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
    w[0] = u.x;
    w[1] = u.y;
  } else {
    static_assert(NB % 16 == 0, "load_words: 2, 4, 8 or a multiple of 16 bytes");
#pragma unroll
    for (int i = 0; i < NB / 16; ++i) {
      const uint4 u = __ldg(reinterpret_cast<const uint4*>(p) + i);
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

// ---- tensor-core helpers (mma.sync m16n8k16, fp16 in, fp32 accumulate) ---------------------

__device__ __forceinline__ unsigned pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const unsigned*>(&h);
}

// c[16x8] += a[16x16] * b[16x8]; fragment layouts of the PTX ISA (g = lane / 4, t = lane % 4):
// a: {(g, 2t..), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..)}, b: {(k 2t.., n g), (k 2t+8.., n g)},
// c: {(g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)}.
__device__ __forceinline__ void mma16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldsm_x4(unsigned* r, const __half* p) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

__device__ __forceinline__ void ldsm_x4_trans(unsigned* r, const __half* p) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// Up to 8 bytes at a 2-byte (NB = 2) or 4-byte aligned address as 32-bit words.
template <int NB>
__device__ __forceinline__ void load_words4(const std::uint8_t* p, unsigned* w) {
  if constexpr (NB == 2) {
    w[0] = __ldg(reinterpret_cast<const unsigned short*>(p));
  } else {
#pragma unroll
    for (int i = 0; i < NB / 4; ++i) w[i] = __ldg(reinterpret_cast<const unsigned*>(p) + i);
  }
}

__device__ __forceinline__ __half2 as_h2(unsigned v) {
  return *reinterpret_cast<const __half2*>(&v);
}
__device__ __forceinline__ unsigned h2_bits(__half2 h) {
  return *reinterpret_cast<const unsigned*>(&h);
}

// Codes 2k, 2k+1 of a chunk of 8 codes (w: the chunk's 8 * BITS bits, LSB first) as half2.
// The byte holding both codes goes to the low byte of each half under the fp16 exponent of 1024
// (one PRMT); masking leaves 1024 + code << s in each half (one LOP3, s the code's bit offset in
// the byte), and one HFMA2 by (2^-s, -1024 2^-s) gives the codes exactly (powers of two).
template <int BITS>
__device__ __forceinline__ __half2 code_pair(const unsigned* w, int k) {
  if constexpr (BITS == 3) {  // w[0]: the chunk's 24 bits (3-bit codes straddle bytes)
    const unsigned x = w[0] >> (6 * k);
    const unsigned v = (x & 0x7u) | ((x << 13) & 0x70000u) | 0x64006400u;
    return __hsub2(as_h2(v), __float2half2_rn(1024.0f));
  } else if constexpr (BITS == 8) {
    const unsigned b = (2 * k) % 4;
    const unsigned v =
        __byte_perm(w[k / 2], 0x64646464u, b | (4u << 4) | ((b + 1) << 8) | (4u << 12));
    return __hsub2(as_h2(v), __float2half2_rn(1024.0f));
  } else {
    static_assert(BITS == 2 || BITS == 4, "code_pair: 2, 4 or 8 bits");
    // byte j holds codes 2k, 2k + 1 at bit offsets s0, s1
    constexpr int PB = 8 / BITS;  // codes per byte
    const unsigned j = 2 * k / PB;
    const int s0 = (2 * k) % PB * BITS, s1 = s0 + BITS;
    const unsigned t = __byte_perm(w[0], 0x64646464u, j | (4u << 4) | (j << 8) | (4u << 12));
    const unsigned m = (((1u << BITS) - 1u) << s0) | ((((1u << BITS) - 1u) << s1) << 16);
    const unsigned v = (t & m) | 0x64006400u;
    // fp16 bits of 2^e (|e| < 15): exponent field e + 15; 0x8000 the sign.
    const unsigned mul =
        static_cast<unsigned>((15 - s0) << 10) | (static_cast<unsigned>((15 - s1) << 10) << 16);
    const unsigned add = (0x8000u | static_cast<unsigned>((25 - s0) << 10)) |
                         ((0x8000u | static_cast<unsigned>((25 - s1) << 10)) << 16);
    return __hfma2(as_h2(v), as_h2(mul), as_h2(add));
  }
}

__device__ __forceinline__ void cp_async16(std::uint8_t* dst, const std::uint8_t* src) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async4(std::uint8_t* dst, const std::uint8_t* src) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
__device__ __forceinline__ void cp_async_wait1() {
  asm volatile("cp.async.wait_group 1;\n" ::: "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}

// The warp copies nbytes (a multiple of 4) from src (4-aligned) to dst (16-aligned): 16-byte
// chunks when src is 16-aligned, 4-byte ones for the tail (never past src + nbytes) or when not.
__device__ __forceinline__ void warp_copy_async(std::uint8_t* dst, const std::uint8_t* src,
                                                int nbytes, int lane) {
  int done = 0;
  if ((reinterpret_cast<std::uintptr_t>(src) & 15u) == 0) {
    done = nbytes & ~15;
    for (int i = 16 * lane; i < done; i += 16 * 32) cp_async16(dst + i, src + i);
  }
  for (int i = done + 4 * lane; i < nbytes; i += 4 * 32) cp_async4(dst + i, src + i);
}

// NB bytes of shared memory at p (aligned to min(NB, 16)) as 32-bit words.
template <int NB>
__device__ __forceinline__ void load_words_smem(const std::uint8_t* p, unsigned* w) {
  if constexpr (NB == 2) {
    w[0] = *reinterpret_cast<const unsigned short*>(p);
  } else if constexpr (NB == 4) {
    w[0] = *reinterpret_cast<const unsigned*>(p);
  } else if constexpr (NB == 8) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    w[0] = u.x;
    w[1] = u.y;
  } else {
    static_assert(NB % 16 == 0, "load_words_smem: 2, 4, 8 or a multiple of 16 bytes");
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

// ---- split-KV partials ----------------------------------------------------------------

// Log-sum-exp merge of the W warps' partial states of row h, column c: red_o [W][H][ld] (the
// unnormalized outputs, leading dimension ld), red_ml [W][H][2] (max in log2 units, sum). Returns
// the merged max; num / den are the merged output and sum (0 when no warp saw a token).
template <int W, int H>
__device__ __forceinline__ float merge_warp_partials(const float* red_o, const float* red_ml,
                                                     int ld, int h, int c, float& num, float& den) {
  float mx = -INFINITY;
#pragma unroll
  for (int w = 0; w < W; ++w) mx = fmaxf(mx, red_ml[(w * H + h) * 2]);
  num = 0.0f;
  den = 0.0f;
  if (mx > -INFINITY) {
#pragma unroll
    for (int w = 0; w < W; ++w) {
      const float mw = red_ml[(w * H + h) * 2];
      const float f = mw == -INFINITY ? 0.0f : exp2f(mw - mx);
      num += f * red_o[(w * H + h) * ld + c];
      den += f * red_ml[(w * H + h) * 2 + 1];
    }
  }
  return mx;
}

}  // namespace cuda_dev
}  // namespace kvcal
