// Naive dense attention (CPU reference): the ground truth every cache and kernel is checked
// against. Materializes the whole score row, softmax in double, no tiling, no shortcuts.
//
//   out[h, t] = sum_j softmax_j(q[h, t] . k[g, j] / sqrt(d)) v[g, j]   over j with
//               k_pos[j] <= q_pos[t] (causal), g = h / (n_heads / n_kv)   (GQA)
// A query that sees no key gets a zero output.
//
//   kvcal::attention_dense_ref(q, k, v, q_pos, k_pos, 8, 2, T, N, 64, out);
#pragma once

#include <cstdint>

namespace kvcal {

// q: [n_heads, T, d] (after RoPE); k, v: [n_kv, N, d] (k after RoPE); q_pos: [T]; k_pos: [N];
// out: [n_heads, T, d].
void attention_dense_ref(const float* q, const float* k, const float* v, const std::int64_t* q_pos,
                         const std::int64_t* k_pos, int n_heads, int n_kv, std::int64_t T,
                         std::int64_t N, int d, float* out);

}  // namespace kvcal
