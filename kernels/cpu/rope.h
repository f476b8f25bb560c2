// Rotary position embedding applied to one head vector (CPU reference), the rotate-half
// convention of Hugging Face Llama/Qwen2/Mistral:
//   x' = x * cos(p * f) + rotate_half(x) * sin(p * f),  rotate_half(x) = [-x[d/2:], x[:d/2]]
// with f = [inv_freq, inv_freq] and cos/sin multiplied by `attention_scaling` (YaRN; 1 otherwise).
// The angle p * f is formed in fp32, as transformers does. The frequencies come from the model's
// RoPE config (runtime/rope.h computes them for default / linear / dynamic / llama3 / yarn).
//
//   kvcal::rope_cos_sin(pos, inv_freq.data(), d, 1.0f, cos, sin);   // cos, sin: [d / 2]
//   kvcal::apply_rope(x, d, cos, sin);                              // x: [d], in place
#pragma once

#include <cstdint>

namespace kvcal {

// cos, sin: [d / 2] for position `pos`, already scaled by attention_scaling.
void rope_cos_sin(std::int64_t pos, const float* inv_freq, int d, float attention_scaling,
                  float* cos, float* sin);
// x: [d] rotated in place with the tables of its position.
void apply_rope(float* x, int d, const float* cos, const float* sin);

}  // namespace kvcal
