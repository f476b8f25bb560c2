// Device helpers of the quantizing append kernels (quant_append.cu, latent_append.cu): the CPU
// reference's fp16 rounding (kernels/cpu/quantize.h), bit for bit, so GPU-written records are
// byte-identical to the host's.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace kvcal {
namespace quant_dev {

static __device__ __forceinline__ unsigned short f2h_bits(float x) {
  return __half_as_ushort(__float2half_rn(x));
}
static __device__ __forceinline__ float h2f_bits(unsigned short h) {
  return __half2float(__ushort_as_half(h));
}
static __device__ __forceinline__ unsigned short fp16_step_down(unsigned short h) {
  if (h == 0x0000u) return 0x8001u;
  return (h & 0x8000u) ? static_cast<unsigned short>(h + 1) : static_cast<unsigned short>(h - 1);
}
static __device__ __forceinline__ unsigned short fp16_step_up(unsigned short h) {
  if (h == 0x8000u) return 0x0001u;
  return (h & 0x8000u) ? static_cast<unsigned short>(h - 1) : static_cast<unsigned short>(h + 1);
}
static __device__ __forceinline__ unsigned short fp16_down(float x) {
  unsigned short h = f2h_bits(x);
  if (h2f_bits(h) > x) h = fp16_step_down(h);
  return h;
}
static __device__ __forceinline__ unsigned short fp16_up(float x) {
  unsigned short h = f2h_bits(x);
  if (h2f_bits(h) < x) h = fp16_step_up(h);
  return h;
}

// Asymmetric scale / zero of a group with range [mn, mx] (kvcal::quantize_group). The _rn
// intrinsics keep nvcc from contracting into FMAs the host does not use.
struct group_q {
  unsigned short scale, zero;
  float z, inv;
};
static __device__ __forceinline__ group_q make_group(float mn, float mx, int bits) {
  const float levels = static_cast<float>((1 << bits) - 1);
  group_q g;
  g.zero = fp16_down(mn);
  g.z = h2f_bits(g.zero);
  unsigned short sh = fp16_up(__fdiv_rn(__fsub_rn(mx, g.z), levels));
  while (__fadd_rn(g.z, __fmul_rn(h2f_bits(sh), levels)) < mx) sh = fp16_step_up(sh);
  g.scale = sh;
  const float s = h2f_bits(sh);
  g.inv = s > 0.0f ? __fdiv_rn(1.0f, s) : 0.0f;
  return g;
}
static __device__ __forceinline__ unsigned char quant_code(float x, const group_q& g, int bits) {
  float r = rintf(__fmul_rn(__fsub_rn(x, g.z), g.inv));
  r = fminf(fmaxf(r, 0.0f), static_cast<float>((1 << bits) - 1));
  return static_cast<unsigned char>(r);
}

// Packs n codes (smem, one byte each) into out[packed_bytes(n, bits)] as the LSB-first stream of
// kernels/cpu/bitpack.h; the block's threads share the bytes.
static __device__ void pack_codes(const unsigned char* codes, int n, int bits, std::uint8_t* out) {
  const int nbytes = (n * bits + 7) / 8;
  for (int i = static_cast<int>(threadIdx.x); i < nbytes; i += static_cast<int>(blockDim.x)) {
    unsigned v = 0;
    if (8 % bits == 0) {
      const int per = 8 / bits;
      for (int k = 0; k < per; ++k)
        if (i * per + k < n) v |= static_cast<unsigned>(codes[i * per + k]) << (k * bits);
    } else {  // 3-bit: codes straddle bytes
      for (int k = 0; k < 8; ++k) {
        const int bit = i * 8 + k, idx = bit / bits;
        if (idx < n) v |= ((static_cast<unsigned>(codes[idx]) >> (bit % bits)) & 1u) << k;
      }
    }
    out[i] = static_cast<std::uint8_t>(v);
  }
}

static __device__ __forceinline__ void store_u16(std::uint8_t* p, unsigned short v) {
  p[0] = static_cast<std::uint8_t>(v & 0xffu);
  p[1] = static_cast<std::uint8_t>(v >> 8);
}

}  // namespace quant_dev
}  // namespace kvcal
