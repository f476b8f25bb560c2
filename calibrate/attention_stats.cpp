#include "calibrate/attention_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/common/error.h"

namespace kvcal {

attention_stats compute_attention_stats(const at::Tensor& q_rope, const at::Tensor& k_rope,
                                        const at::Tensor& positions, std::int64_t window,
                                        std::int64_t sliding_window, std::int64_t max_block_bytes) {
  KVCAL_CHECK(q_rope.dim() == 4 && k_rope.dim() == 4, "attention stats: q and k must be 4-d");
  const std::int64_t B = q_rope.size(0), H = q_rope.size(1), T = q_rope.size(2), d = q_rope.size(3),
                     G = k_rope.size(1);
  KVCAL_CHECK(
      k_rope.size(0) == B && k_rope.size(2) == T && k_rope.size(3) == d && G >= 1 && H % G == 0,
      "attention stats: q ", q_rope.sizes(), " and k ", k_rope.sizes(), " do not match");
  KVCAL_CHECK(positions.dim() == 1 && positions.size(0) == T, "attention stats: positions ",
              positions.sizes(), " for ", T, " tokens");
  KVCAL_CHECK(window >= 1, "attention stats: window must be >= 1");
  const std::int64_t g = H / G;
  const at::Tensor q = q_rope.to(at::kFloat);                   // [B, H, T, d]
  const at::Tensor kt = k_rope.to(at::kFloat).transpose(2, 3);  // [B, G, d, T]
  const at::Tensor pos = positions.to(q.device(), at::kLong);   // [T]
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const auto opt = q.options();
  attention_stats s{at::zeros({B, G, T}, opt), at::zeros({B, G, T}, opt),
                    at::zeros({B, G, T}, opt)};
  // Scores, probabilities and one temporary per block: 3 x [B, H, n, T] floats.
  const std::int64_t per_query = std::max<std::int64_t>(1, 3 * B * H * T * 4);
  const std::int64_t block = std::clamp<std::int64_t>(max_block_bytes / per_query, 1, T);
  for (std::int64_t q0 = 0; q0 < T; q0 += block) {
    const std::int64_t n = std::min(block, T - q0);
    at::Tensor qb = q.narrow(2, q0, n).reshape({B, G, g * n, d});  // [B, G, g*n, d]
    at::Tensor scores = at::matmul(qb, kt).mul_(scale).view({B, G, g, n, T});
    at::Tensor diff = pos.narrow(0, q0, n).unsqueeze(1) - pos.unsqueeze(0);  // [n, T]: i - j
    at::Tensor seen = diff.ge(0);
    if (sliding_window > 0) seen = seen.logical_and(diff.lt(sliding_window));
    scores.masked_fill_(seen.logical_not(), -std::numeric_limits<float>::infinity());
    at::Tensor a = at::softmax(scores, -1).mean(2);  // [B, G, n, T] group-mean attention
    s.cum.add_(a.sum(2));
    s.next.add_(a.mul(seen.logical_and(diff.lt(window)).to(at::kFloat)).sum(2));
    s.max = at::maximum(s.max, std::get<0>(a.max(2)));
  }
  return s;
}

}  // namespace kvcal
