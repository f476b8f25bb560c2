#include "model/full_cache.h"

#include <torch/version.h>

#include <cmath>
#include <limits>

#include "kernels/common/error.h"

#if TORCH_VERSION_MAJOR >= 2
#define KVCAL_HAVE_SDPA 1
#else
#define KVCAL_HAVE_SDPA 0
#endif

namespace kvcal {
namespace {

#if KVCAL_HAVE_SDPA
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)
#define KVCAL_HAVE_CUDNN_SDPA_SWITCH 1
#endif
// torch >= 2.5 may pick the cuDNN SDPA backend, which builds an execution plan per new shape:
// ~50 ms per decode step, where the key length grows every step (measured on an H200 with torch
// 2.11, against 0.05 ms for flash). It stays allowed (if the user allows it) for a prefill that
// starts a sequence, whose shapes repeat (eval windows, benchmark lengths); every other call runs
// with it switched off. libtorch's switch is process-wide, so it is restored on scope exit.
class sdpa_backend_scope {
 public:
  explicit sdpa_backend_scope(bool allow_cudnn) {
#ifdef KVCAL_HAVE_CUDNN_SDPA_SWITCH
    saved_ = at::globalContext().userEnabledCuDNNSDP();
    if (!allow_cudnn && saved_) {
      at::globalContext().setSDPUseCuDNN(false);
      changed_ = true;
    }
#else
    (void)allow_cudnn;
#endif
  }
  ~sdpa_backend_scope() {
#ifdef KVCAL_HAVE_CUDNN_SDPA_SWITCH
    if (changed_) at::globalContext().setSDPUseCuDNN(saved_);
#endif
  }
  sdpa_backend_scope(const sdpa_backend_scope&) = delete;
  sdpa_backend_scope& operator=(const sdpa_backend_scope&) = delete;

 private:
  bool saved_ = false, changed_ = false;
};
#endif

// [rep T, S] bool: query row (r, t) at position q_start + t may read key j.
at::Tensor allowed_mask(std::int64_t rep, std::int64_t T, std::int64_t S, std::int64_t q_start,
                        std::int64_t window, at::Device device) {
  auto opt = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor qpos = at::arange(q_start, q_start + T, opt).repeat({rep}).unsqueeze(1);  // [rep T, 1]
  at::Tensor kpos = at::arange(S, opt).unsqueeze(0);                                   // [1, S]
  at::Tensor allowed = kpos <= qpos;
  if (window > 0) allowed = allowed.logical_and(kpos > qpos - window);
  return allowed;
}

// Explicit math as transformers' eager attention: scores in the compute dtype, softmax in fp32.
// q: [B, n_kv, M, d] (folded), k/v: [B, n_kv, S, d], allowed: [M, S] or undefined.
at::Tensor math_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& allowed, double scale) {
  at::Tensor scores = at::matmul(q, k.transpose(2, 3)) * scale;  // [B, n_kv, M, S]
  if (allowed.defined())
    scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
  at::Tensor p = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  return at::matmul(p, v);  // [B, n_kv, M, d]
}

}  // namespace

at::Tensor causal_attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                            std::int64_t q_start, std::int64_t window) {
  KVCAL_CHECK(q_in.dim() == 4 && k_in.dim() == 4 && v_in.dim() == 4,
              "attention: q, k, v must be [B, heads, tokens, head_dim]");
  const std::int64_t B = q_in.size(0), nh = q_in.size(1), T = q_in.size(2), d = q_in.size(3);
  const std::int64_t nkv = k_in.size(1);
  KVCAL_CHECK(nkv > 0 && nh % nkv == 0, "attention: ", nh, " query heads are not a multiple of ",
              nkv, " KV heads");
  KVCAL_CHECK(q_start + T <= k_in.size(2), "attention: queries at positions up to ",
              q_start + T - 1, " but only ", k_in.size(2), " keys are held");
  const std::int64_t rep = nh / nkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));

  // Keys no query can see (before the window of the first query) are dropped up front; key
  // positions below then count from `first`.
  at::Tensor k = k_in, v = v_in;
  std::int64_t first = 0;
  if (window > 0 && q_start - window + 1 > 0) first = q_start - window + 1;
  const std::int64_t end = q_start + T;  // keys beyond the last query are never read
  if (first > 0 || end < k.size(2)) {
    k = k.narrow(2, first, end - first);
    v = v.narrow(2, first, end - first);
  }
  const std::int64_t S = k.size(2);
  const std::int64_t qs = q_start - first;  // query start in the narrowed key frame
  // Does any query see a key it must not? (causal: T > 1; window: a key older than p - window)
  const bool needs_mask = T > 1 || (window > 0 && S > window);
  const bool plain_causal = qs == 0 && T == S && (window == 0 || S <= window);

#if KVCAL_HAVE_SDPA
  if (q_in.is_cuda()) {
    const sdpa_backend_scope backends(/*allow_cudnn=*/plain_causal && T > 1);
    if (plain_causal && T > 1) {
      // Prefill that starts the sequence: the fused causal kernel over KV heads repeated to the
      // query heads (a copy of this call's K/V, cheap next to the attention itself).
      at::Tensor kr =
          rep == 1 ? k : k.unsqueeze(2).expand({B, nkv, rep, S, d}).reshape({B, nh, S, d});
      at::Tensor vr =
          rep == 1 ? v : v.unsqueeze(2).expand({B, nkv, rep, S, d}).reshape({B, nh, S, d});
      return at::scaled_dot_product_attention(q_in, kr, vr, {}, 0.0, /*is_causal=*/true);
    }
    at::Tensor qf = q_in.reshape({B, nkv, rep * T, d});
    at::Tensor out;
    if (!needs_mask) {
      out = at::scaled_dot_product_attention(qf, k, v, {}, 0.0, false);
    } else {
      at::Tensor allowed = allowed_mask(rep, T, S, qs, window, q_in.device());
      out = at::scaled_dot_product_attention(qf, k, v, allowed, 0.0, false);
    }
    return out.reshape({B, nh, T, d});
  }
#endif
  (void)plain_causal;
  at::Tensor qf = q_in.reshape({B, nkv, rep * T, d});
  at::Tensor allowed;
  if (needs_mask) allowed = allowed_mask(rep, T, S, qs, window, q_in.device());
  return math_attention(qf, k, v, allowed, scale).reshape({B, nh, T, d});
}

full_cache::full_cache(const model_config& cfg, std::int64_t batch, at::Device device,
                       at::ScalarType dtype, std::int64_t capacity_hint)
    : cache_shape(cfg, batch),
      device_(device),
      dtype_(dtype),
      k_(static_cast<std::size_t>(cfg.num_hidden_layers)),
      v_(static_cast<std::size_t>(cfg.num_hidden_layers)),
      len_(static_cast<std::size_t>(cfg.num_hidden_layers), 0) {
  KVCAL_CHECK(batch > 0, "full_cache: batch must be positive, got ", batch);
  KVCAL_CHECK(capacity_hint >= 0, "full_cache: capacity_hint must be >= 0");
  if (capacity_hint > 0) reserve(capacity_hint);
}

void full_cache::reserve(std::int64_t tokens) {
  if (tokens <= capacity_) return;
  const std::int64_t cap = std::max(tokens, capacity_ * 2);
  auto opt = at::TensorOptions().dtype(dtype_).device(device_);
  for (std::size_t l = 0; l < k_.size(); ++l) {
    at::Tensor k = at::empty({batch_, n_kv_, cap, head_dim_}, opt);
    at::Tensor v = at::empty({batch_, n_kv_, cap, head_dim_}, opt);
    if (len_[l] > 0) {
      k.narrow(2, 0, len_[l]).copy_(k_[l].narrow(2, 0, len_[l]));
      v.narrow(2, 0, len_[l]).copy_(v_[l].narrow(2, 0, len_[l]));
    }
    k_[l] = k;
    v_[l] = v;
  }
  capacity_ = cap;
}

void full_cache::append(int layer, const kv_append& kv) {
  KVCAL_CHECK(layer >= 0 && layer < n_layers_, "full_cache: layer ", layer, " out of range [0, ",
              n_layers_, ")");
  const at::Tensor& k = kv.k_rope;
  KVCAL_CHECK(k.dim() == 4 && k.size(0) == batch_ && k.size(1) == n_kv_ && k.size(3) == head_dim_,
              "full_cache: k_rope must be [", batch_, ", ", n_kv_, ", T, ", head_dim_, "], got ",
              k.sizes());
  KVCAL_CHECK(kv.v.sizes() == k.sizes(), "full_cache: v shape ", kv.v.sizes(),
              " differs from k_rope ", k.sizes());
  const std::size_t l = static_cast<std::size_t>(layer);
  const std::int64_t T = k.size(2);
  reserve(len_[l] + T);
  k_[l].narrow(2, len_[l], T).copy_(k);
  v_[l].narrow(2, len_[l], T).copy_(kv.v);
  len_[l] += T;
}

at::Tensor full_cache::attend(int layer, const at::Tensor& q_rope, const at::Tensor& positions) {
  KVCAL_CHECK(layer >= 0 && layer < n_layers_, "full_cache: layer ", layer, " out of range");
  KVCAL_CHECK(q_rope.dim() == 4 && q_rope.size(1) == n_heads_ && q_rope.size(3) == head_dim_,
              "full_cache: q_rope must be [B, ", n_heads_, ", T, ", head_dim_, "], got ",
              q_rope.sizes());
  const std::int64_t T = q_rope.size(2);
  KVCAL_CHECK(positions.dim() == 1 && positions.size(0) == T, "full_cache: positions must be [", T,
              "]");
  const std::size_t l = static_cast<std::size_t>(layer);
  KVCAL_CHECK(len_[l] >= T, "full_cache: attend before append at layer ", layer);
  // The queries are the tokens just appended: positions len - T .. len - 1.
  return causal_attention(q_rope, keys(layer), values(layer), len_[l] - T, window_);
}

std::int64_t full_cache::length() const {
  return len_.empty() ? 0 : len_.back();
}

void full_cache::reset() {
  for (auto& n : len_) n = 0;
}

at::Tensor full_cache::keys(int layer) const {
  const std::size_t l = static_cast<std::size_t>(layer);
  if (!k_[l].defined())
    return at::empty({batch_, n_kv_, 0, head_dim_},
                     at::TensorOptions().dtype(dtype_).device(device_));
  return k_[l].narrow(2, 0, len_[l]);
}

at::Tensor full_cache::values(int layer) const {
  const std::size_t l = static_cast<std::size_t>(layer);
  if (!v_[l].defined())
    return at::empty({batch_, n_kv_, 0, head_dim_},
                     at::TensorOptions().dtype(dtype_).device(device_));
  return v_[l].narrow(2, 0, len_[l]);
}

std::int64_t full_cache::bytes() const {
  std::int64_t b = 0;
  for (std::size_t l = 0; l < k_.size(); ++l)
    if (k_[l].defined()) b += 2 * k_[l].numel() * k_[l].element_size();
  return b;
}

}  // namespace kvcal
