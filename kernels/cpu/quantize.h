// Grouped integer quantization of KV vectors (CPU reference), in the two KIVI layouts:
//   per-token   (V, and PCA/AE latents): the d values of one token vector are cut into groups of
//               `group` consecutive channels; each group has one fp16 scale (and zero).
//   per-channel (K): a block of `group` consecutive tokens [group, d]; each channel has one fp16
//               scale (and zero) over those tokens, so an outlier channel gets its own range.
// Codes are bit-packed (kernels/cpu/bitpack.h); per-channel codes are token-major: code of
// (token j, channel c) is stream index j * d + c.
//
// Asymmetric: x ~= zero + code * scale, code in [0, 2^bits - 1]. The zero is the group minimum
// rounded DOWN to fp16 and the scale (max - zero) / (2^bits - 1) rounded UP to fp16, so the fp16
// grid still covers [min, max] and every element is within scale / 2 of its reconstruction.
// Symmetric: x ~= (code - q) * scale with q = 2^(bits-1) - 1, code in [0, 2q], scale = absmax / q
// rounded up (2-bit symmetric has 3 levels); no zero is stored. Same scale / 2 bound.
// Inputs must lie within the fp16 range (|x| < 65504).
//
//   kvcal::quant_spec s{2, 32, false};
//   kvcal::quantize_per_token(x, 128, s, codes, scales, zeros);     // codes: packed_bytes(128, 2)
//   kvcal::dequantize_per_token(codes, scales, zeros, 128, s, out);
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvcal {

struct quant_spec {
  int bits = 4;            // 2 | 3 | 4 | 8
  int group = 32;          // per-token: channels per group (divides d); per-channel: tokens
  bool symmetric = false;  // true: scale only
};

// fp16 bit patterns rounding toward -inf / +inf: fp16_to_float(round_down) <= x <= ...(round_up).
std::uint16_t fp16_round_down(float x);
std::uint16_t fp16_round_up(float x);

// Quantizes n values x[i * x_stride] into codes at stream indices first + i * code_stride of
// `packed` (whose bits there must be zero). Writes the fp16 scale and, if asymmetric, the zero.
void quantize_group(const float* x, std::size_t n, std::size_t x_stride, int bits, bool symmetric,
                    std::uint8_t* packed, std::size_t first, std::size_t code_stride,
                    std::uint16_t* scale, std::uint16_t* zero);
inline float dequantize_code(unsigned code, float scale, float zero, int bits, bool symmetric) {
  if (symmetric)
    return (static_cast<float>(code) - static_cast<float>((1 << (bits - 1)) - 1)) * scale;
  return zero + static_cast<float>(code) * scale;
}

// Per-token layout. x: [d]; codes: [packed_bytes(d, bits)]; scales, zeros: [d / group]
// (zeros unused and may be null when symmetric). spec.group must divide d.
void quantize_per_token(const float* x, int d, const quant_spec& spec, std::uint8_t* codes,
                        std::uint16_t* scales, std::uint16_t* zeros);
void dequantize_per_token(const std::uint8_t* codes, const std::uint16_t* scales,
                          const std::uint16_t* zeros, int d, const quant_spec& spec, float* out);

// Per-channel layout. x: [spec.group, d] (token-major); codes: [packed_bytes(group * d, bits)];
// scales, zeros: [d].
void quantize_per_channel(const float* x, int d, const quant_spec& spec, std::uint8_t* codes,
                          std::uint16_t* scales, std::uint16_t* zeros);
// out: [spec.group, d].
void dequantize_per_channel(const std::uint8_t* codes, const std::uint16_t* scales,
                            const std::uint16_t* zeros, int d, const quant_spec& spec, float* out);

}  // namespace kvcal
