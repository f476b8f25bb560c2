#include "model/attention_lse.h"

#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>

#include "kernels/common/error.h"
#include "model/full_cache.h"

#if TORCH_VERSION_MAJOR >= 2
#define KVCAL_HAVE_FLASH_LSE 1
#else
#define KVCAL_HAVE_FLASH_LSE 0
#endif

namespace kvcal {

namespace {

void check_shapes(const at::Tensor& q, const at::Tensor& k) {
  KVCAL_CHECK(q.dim() == 4 && k.dim() == 4 && q.size(0) == k.size(0) && q.size(2) == k.size(2) &&
                  q.size(3) == k.size(3) && k.size(1) > 0 && q.size(1) % k.size(1) == 0,
              "attention lse: q [B, H, T, d] and k [B, n_kv, T, d] with H a multiple of n_kv, got ",
              q.sizes(), " and ", k.sizes());
}

// The scaled causal logits of q_in [B, H, T, d] against k [B, n_kv, T, d] (fp32), chunk by chunk
// of queries so that the [B, H, chunk, T] logits stay near 512 MB: fn(i0, c, e, sc) for queries
// [i0, i0 + c) and keys [0, e = i0 + c), sc [B, n_kv, G, c, e] fp32 with -inf above the diagonal.
template <typename Fn>
void for_each_causal_chunk(const at::Tensor& q_in, const at::Tensor& k, Fn&& fn) {
  const std::int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2), d = q_in.size(3);
  const std::int64_t nkv = k.size(1), G = H / nkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const std::int64_t chunk =
      std::max<std::int64_t>(1, (std::int64_t{1} << 27) / std::max<std::int64_t>(1, B * H * T));
  for (std::int64_t i0 = 0; i0 < T; i0 += chunk) {
    const std::int64_t c = std::min(chunk, T - i0), e = i0 + c;  // keys [0, e) are visible
    at::Tensor q = q_in.narrow(2, i0, c).to(at::kFloat).reshape({B, nkv, G * c, d});
    at::Tensor sc = at::matmul(q, k.narrow(2, 0, e).transpose(2, 3)).mul_(scale);
    sc = sc.view({B, nkv, G, c, e});  // [B, n_kv, G, c, e]
    at::Tensor kp = at::arange(e, k.options().dtype(at::kLong)).view({1, e});
    at::Tensor qp = at::arange(i0, e, k.options().dtype(at::kLong)).view({c, 1});
    sc.masked_fill_(kp > qp, -std::numeric_limits<double>::infinity());
    fn(i0, c, e, sc);
  }
}

}  // namespace

bool flash_lse_available(const at::Tensor& q) {
#if KVCAL_HAVE_FLASH_LSE
  const auto t = q.scalar_type();
  return q.is_cuda() && (t == at::kBFloat16 || t == at::kHalf) && q.size(-1) % 8 == 0 &&
         q.size(-1) <= 256;
#else
  (void)q;
  return false;
#endif
}

attention_lse causal_attention_lse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_shapes(q, k);
  KVCAL_CHECK(v.sizes() == k.sizes(), "attention lse: v ", v.sizes(), " differs from k ",
              k.sizes());
  attention_lse r;
#if KVCAL_HAVE_FLASH_LSE
  if (flash_lse_available(q)) {
    const std::int64_t B = q.size(0), H = q.size(1), T = q.size(2), d = q.size(3);
    const std::int64_t nkv = k.size(1), rep = H / nkv;
    at::Tensor kr = rep == 1 ? k : k.unsqueeze(2).expand({B, nkv, rep, T, d}).reshape({B, H, T, d});
    at::Tensor vr = rep == 1 ? v : v.unsqueeze(2).expand({B, nkv, rep, T, d}).reshape({B, H, T, d});
    // (out, logsumexp, cum_seq_q, cum_seq_k, max_q, max_k, philox seed / offset, debug mask);
    // scale: the default 1 / sqrt(d).
    // The flash kernel reads channels contiguous.
    auto inner = [](const at::Tensor& x) { return x.stride(3) == 1 ? x : x.contiguous(); };
    auto res = at::_scaled_dot_product_flash_attention(inner(q), inner(kr), inner(vr), 0.0,
                                                       /*is_causal=*/true);
    r.out = std::get<0>(res);
    at::Tensor lse = std::get<1>(res);
    KVCAL_CHECK(lse.dim() == 3 && lse.size(0) == B && lse.size(1) == H && lse.size(2) >= T &&
                    lse.scalar_type() == at::kFloat,
                "attention lse: the flash kernel returned logsumexp ", lse.sizes(), " ",
                lse.scalar_type(), ", expected [", B, ", ", H, ", >= ", T, "] fp32");
    r.lse = lse.size(2) == T ? lse : lse.narrow(2, 0, T);  // older kernels pad the query axis
    if (r.lse.stride(2) != 1) r.lse = r.lse.contiguous();
    return r;
  }
#endif
  r.out = causal_attention(q, k, v, 0, 0);
  r.lse = causal_lse_reference(q, k);
  return r;
}

at::Tensor causal_lse_reference(const at::Tensor& q_in, const at::Tensor& k_in) {
  check_shapes(q_in, k_in);
  const std::int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2);
  const std::int64_t nkv = k_in.size(1), G = H / nkv;
  at::Tensor k = k_in.to(at::kFloat);
  at::Tensor lse = at::empty({B, nkv, G, T}, k.options());
  for_each_causal_chunk(q_in, k,
                        [&](std::int64_t i0, std::int64_t c, std::int64_t, at::Tensor& sc) {
                          lse.narrow(3, i0, c).copy_(at::logsumexp(sc, -1));
                        });
  return lse.view({B, H, T});
}

at::Tensor h2o_scores_reference(const at::Tensor& q_in, const at::Tensor& k_in) {
  check_shapes(q_in, k_in);
  const std::int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2);
  const std::int64_t nkv = k_in.size(1), G = H / nkv;
  at::Tensor k = k_in.to(at::kFloat);
  at::Tensor score = at::zeros({B, nkv, T}, k.options());
  for_each_causal_chunk(q_in, k, [&](std::int64_t, std::int64_t, std::int64_t e, at::Tensor& sc) {
    score.narrow(2, 0, e).add_(at::softmax(sc, -1).sum({2, 3}).div_(static_cast<double>(G)));
  });
  return score;
}

}  // namespace kvcal
