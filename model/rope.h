// Rotary position embedding of the Llama family, computed exactly as transformers'
// ROPE_INIT_FUNCTIONS (modeling_rope_utils.py) and LlamaRotaryEmbedding do, so that fp32 results
// match bit for bit where the same ATen ops run:
//   inv_freq [d/2] fp32 from rope_theta and the scaling type (default, linear, dynamic, llama3,
//   yarn); attention scaling (yarn's attention_factor, 1 otherwise) multiplies cos and sin;
//   freqs = position x inv_freq in fp32, emb = cat(freqs, freqs); x' = x cos + rotate_half(x) sin
//   with rotate_half(x) = cat(-x[d/2:], x[:d/2]).
// Dynamic NTK: transformers recomputes inv_freq when a forward reaches past
// max_position_embeddings (seq_len = max position + 1) and keeps the original one below it; this
// class does the same per call, statelessly (same result for a sequence whose positions grow).
//
//   kvcal::rope r(cfg);                                  // model_config (runtime/model_config.h)
//   auto cs = r.cos_sin(positions, at::kBFloat16);       // positions [T] int64 on the device
//   at::Tensor q_rope = kvcal::apply_rope(q, cs);        // q [B, H, T, d]
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "runtime/model_config.h"

namespace kvcal {

struct rope_cos_sin {
  at::Tensor cos;      // [T, d] in the compute dtype, scaled by the attention factor
  at::Tensor sin;      // [T, d]
  at::Tensor sin_rot;  // [T, d] sin with its first half negated: rotate_half(x) sin =
                       // cat(x2, x1) sin_rot (one op less per application)
};

// inv_freq [d/2] fp32 on the CPU and the attention scaling, as ROPE_INIT_FUNCTIONS[type](config,
// seq_len) returns them. seq_len only matters for `dynamic` (0 = at init: max_position_embeddings).
struct rope_params {
  at::Tensor inv_freq;
  double attention_scaling = 1.0;
};
rope_params compute_rope_params(const model_config& cfg, std::int64_t seq_len = 0);

class rope {
 public:
  // inv_freq is kept on `device` (the model's); positions elsewhere get a copy per call.
  explicit rope(const model_config& cfg, at::Device device = at::kCPU);
  // cos/sin for `positions` ([T] int64, any device), cast to `dtype` on the positions' device.
  rope_cos_sin cos_sin(const at::Tensor& positions, at::ScalarType dtype) const;
  // The same, when the caller knows the largest position (avoids a device sync for `dynamic`).
  rope_cos_sin cos_sin(const at::Tensor& positions, std::int64_t max_position,
                       at::ScalarType dtype) const;
  const rope_params& params() const { return base_; }

 private:
  model_config cfg_;
  rope_params base_;            // inv_freq at init (CPU, fp32)
  at::Tensor device_inv_freq_;  // base_.inv_freq on the model's device
};

// x: [B, H, T, d]; cos/sin [T, d] (broadcast over B and H). Returns x cos + rotate_half(x) sin.
at::Tensor apply_rope(const at::Tensor& x, const rope_cos_sin& cs);
// The same for x in [B, T, H, d] layout (heads of q and k side by side in one projection).
at::Tensor apply_rope_bthd(const at::Tensor& x, const rope_cos_sin& cs);

}  // namespace kvcal
