#include "kernels/cpu/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/common/error.h"
#include "kernels/common/half.h"
#include "kernels/cpu/bitpack.h"

namespace kvcal {

namespace {

// The next fp16 value toward -inf / +inf from pattern h.
std::uint16_t fp16_step_down(std::uint16_t h) {
  if (h == 0x0000u) return 0x8001u;  // +0 -> smallest negative subnormal
  return (h & 0x8000u) ? static_cast<std::uint16_t>(h + 1) : static_cast<std::uint16_t>(h - 1);
}
std::uint16_t fp16_step_up(std::uint16_t h) {
  if (h == 0x8000u) return 0x0001u;  // -0 -> smallest positive subnormal
  return (h & 0x8000u) ? static_cast<std::uint16_t>(h - 1) : static_cast<std::uint16_t>(h + 1);
}

}  // namespace

std::uint16_t fp16_round_down(float x) {
  std::uint16_t h = float_to_fp16(x);
  if (fp16_to_float(h) > x) h = fp16_step_down(h);
  return h;
}

std::uint16_t fp16_round_up(float x) {
  std::uint16_t h = float_to_fp16(x);
  if (fp16_to_float(h) < x) h = fp16_step_up(h);
  return h;
}

void quantize_group(const float* x, std::size_t n, std::size_t x_stride, int bits, bool symmetric,
                    std::uint8_t* packed, std::size_t first, std::size_t code_stride,
                    std::uint16_t* scale, std::uint16_t* zero) {
  KVCAL_ASSERT(bits >= 1 && bits <= 8 && n > 0, "quantize_group: bits ", bits, " n ", n);
  float mn = x[0], mx = x[0];
  for (std::size_t i = 1; i < n; ++i) {
    mn = std::min(mn, x[i * x_stride]);
    mx = std::max(mx, x[i * x_stride]);
  }
  if (symmetric) {
    const int q = (1 << (bits - 1)) - 1;
    KVCAL_ASSERT(q >= 1, "symmetric quantization needs >= 2 bits");
    const float amax = std::max(std::fabs(mn), std::fabs(mx));
    std::uint16_t sh = fp16_round_up(amax / static_cast<float>(q));
    // Float division may land a hair low: widen until the grid covers amax.
    while (fp16_to_float(sh) * static_cast<float>(q) < amax) sh = fp16_step_up(sh);
    *scale = sh;
    const float s = fp16_to_float(sh);
    const float inv = s > 0 ? 1.0f / s : 0.0f;
    for (std::size_t i = 0; i < n; ++i) {
      float r = std::nearbyint(x[i * x_stride] * inv);
      r = std::min(std::max(r, static_cast<float>(-q)), static_cast<float>(q));
      put_bits(packed, first + i * code_stride, bits,
               static_cast<unsigned>(r + static_cast<float>(q)));
    }
    return;
  }
  const int levels = (1 << bits) - 1;
  const std::uint16_t zh = fp16_round_down(mn);
  const float z = fp16_to_float(zh);
  std::uint16_t sh = fp16_round_up((mx - z) / static_cast<float>(levels));
  while (z + fp16_to_float(sh) * static_cast<float>(levels) < mx) sh = fp16_step_up(sh);
  *scale = sh;
  *zero = zh;
  const float s = fp16_to_float(sh);
  const float inv = s > 0 ? 1.0f / s : 0.0f;
  for (std::size_t i = 0; i < n; ++i) {
    float r = std::nearbyint((x[i * x_stride] - z) * inv);
    r = std::min(std::max(r, 0.0f), static_cast<float>(levels));
    put_bits(packed, first + i * code_stride, bits, static_cast<unsigned>(r));
  }
}

void quantize_per_token(const float* x, int d, const quant_spec& spec, std::uint8_t* codes,
                        std::uint16_t* scales, std::uint16_t* zeros) {
  KVCAL_ASSERT(spec.group > 0 && d % spec.group == 0, "per-token group ", spec.group,
               " does not divide d ", d);
  std::memset(codes, 0, packed_bytes(static_cast<std::size_t>(d), spec.bits));
  std::uint16_t unused = 0;
  for (int g = 0; g < d / spec.group; ++g) {
    const std::size_t at = static_cast<std::size_t>(g) * static_cast<std::size_t>(spec.group);
    quantize_group(x + at, static_cast<std::size_t>(spec.group), 1, spec.bits, spec.symmetric,
                   codes, at, 1, &scales[g], spec.symmetric ? &unused : &zeros[g]);
  }
}

void dequantize_per_token(const std::uint8_t* codes, const std::uint16_t* scales,
                          const std::uint16_t* zeros, int d, const quant_spec& spec, float* out) {
  for (int g = 0; g < d / spec.group; ++g) {
    const float s = fp16_to_float(scales[g]);
    const float z = spec.symmetric ? 0.0f : fp16_to_float(zeros[g]);
    for (int i = g * spec.group; i < (g + 1) * spec.group; ++i)
      out[i] = dequantize_code(get_bits(codes, static_cast<std::size_t>(i), spec.bits), s, z,
                               spec.bits, spec.symmetric);
  }
}

void quantize_per_channel(const float* x, int d, const quant_spec& spec, std::uint8_t* codes,
                          std::uint16_t* scales, std::uint16_t* zeros) {
  const std::size_t D = static_cast<std::size_t>(d), G = static_cast<std::size_t>(spec.group);
  std::memset(codes, 0, packed_bytes(G * D, spec.bits));
  std::uint16_t unused = 0;
  for (std::size_t c = 0; c < D; ++c)
    quantize_group(x + c, G, D, spec.bits, spec.symmetric, codes, c, D, &scales[c],
                   spec.symmetric ? &unused : &zeros[c]);
}

void dequantize_per_channel(const std::uint8_t* codes, const std::uint16_t* scales,
                            const std::uint16_t* zeros, int d, const quant_spec& spec, float* out) {
  const std::size_t D = static_cast<std::size_t>(d), G = static_cast<std::size_t>(spec.group);
  for (std::size_t c = 0; c < D; ++c) {
    const float s = fp16_to_float(scales[c]);
    const float z = spec.symmetric ? 0.0f : fp16_to_float(zeros[c]);
    for (std::size_t j = 0; j < G; ++j)
      out[j * D + c] =
          dequantize_code(get_bits(codes, j * D + c, spec.bits), s, z, spec.bits, spec.symmetric);
  }
}

}  // namespace kvcal
