// Attention statistics of every key token, computed from one sequence's post-RoPE queries and keys
// without materializing the full attention matrix: queries are processed in blocks, so memory is
// O(block x seq_len x heads), bounded by `max_block_bytes`. Definitions (GQA reduction included)
// are in calibrate/capture_format.h.
//
//   auto s = kvcal::compute_attention_stats(a.q_rope, a.k_rope, a.positions, /*window=*/64);
//   s.cum  // [B, n_kv, T] float32: H2O score; s.next: received from the next W queries; s.max
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace kvcal {

struct attention_stats {
  at::Tensor cum;   // [B, n_kv, T] float32
  at::Tensor next;  // [B, n_kv, T] float32
  at::Tensor max;   // [B, n_kv, T] float32
};

// q_rope: [B, n_heads, T, d]; k_rope: [B, n_kv, T, d] (same tokens: a sequence's prefill);
// positions: [T] int64. window: W of `next` (>= 1). sliding_window: the model's (0 = none).
// Computed in fp32 on the tensors' device.
attention_stats compute_attention_stats(const at::Tensor& q_rope, const at::Tensor& k_rope,
                                        const at::Tensor& positions, std::int64_t window,
                                        std::int64_t sliding_window = 0,
                                        std::int64_t max_block_bytes = std::int64_t{256} << 20);

}  // namespace kvcal
