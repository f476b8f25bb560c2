#include "model/static_cache.h"

#include <cmath>
#include <limits>

#include "kernels/common/error.h"
#include "model/full_cache.h"

namespace kvcal {

static_cache::static_cache(const model_config& cfg, std::int64_t batch, std::int64_t capacity,
                           at::Device device, at::ScalarType dtype)
    : cache_shape(cfg, batch),
      capacity_(capacity),
      len_(static_cast<std::size_t>(cfg.num_hidden_layers), 0) {
  KVCAL_CHECK(batch > 0 && capacity > 0, "static_cache: batch and capacity must be positive");
  auto opt = at::TensorOptions().dtype(dtype).device(device);
  for (std::int64_t l = 0; l < n_layers_; ++l) {
    k_.push_back(at::zeros({batch, n_kv_, capacity, head_dim_}, opt));
    v_.push_back(at::zeros({batch, n_kv_, capacity, head_dim_}, opt));
  }
  slots_ = at::arange(capacity, at::TensorOptions().dtype(at::kLong).device(device));
}

void static_cache::append(int layer, const kv_append& kv) {
  KVCAL_CHECK(layer >= 0 && layer < n_layers_, "static_cache: layer ", layer, " out of range");
  const at::Tensor& k = kv.k_rope;
  KVCAL_CHECK(k.dim() == 4 && k.size(0) == batch_ && k.size(1) == n_kv_ && k.size(3) == head_dim_,
              "static_cache: k_rope must be [", batch_, ", ", n_kv_, ", T, ", head_dim_, "], got ",
              k.sizes());
  const std::size_t l = static_cast<std::size_t>(layer);
  const std::int64_t T = k.size(2);
  KVCAL_CHECK(len_[l] + T <= capacity_, "static_cache: capacity ", capacity_, " exceeded (",
              len_[l], " held + ", T, " new tokens)");
  k_[l].index_copy_(2, kv.positions, k);
  v_[l].index_copy_(2, kv.positions, kv.v);
  len_[l] += T;
}

at::Tensor static_cache::attend(int layer, const at::Tensor& q, const at::Tensor& positions) {
  const std::size_t l = static_cast<std::size_t>(layer);
  const std::int64_t B = q.size(0), T = q.size(2), d = q.size(3);
  if (T > 1) {
    // Prefill: the tokens just appended are the last T held; no capture happens here.
    return causal_attention(q, k_[l].narrow(2, 0, len_[l]), v_[l].narrow(2, 0, len_[l]),
                            len_[l] - T, window_);
  }
  // One step over the whole capacity, masked on the device: [B, n_kv, rep, capacity].
  const std::int64_t rep = n_heads_ / n_kv_;
  at::Tensor qf = q.reshape({B, n_kv_, rep, d});
  at::Tensor scores =
      at::matmul(qf, k_[l].transpose(2, 3)) * (1.0 / std::sqrt(static_cast<double>(d)));
  at::Tensor p = positions.narrow(0, 0, 1);  // [1]
  at::Tensor allowed = slots_ <= p;          // [capacity]
  if (window_ > 0) allowed = allowed.logical_and(slots_ > p - window_);
  scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
  at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  return at::matmul(probs, v_[l]).reshape({B, n_heads_, 1, d});
}

std::int64_t static_cache::length() const {
  return len_.empty() ? 0 : len_.back();
}

void static_cache::reset() {
  for (auto& n : len_) n = 0;
}

void static_cache::set_length(std::int64_t n) {
  KVCAL_CHECK(n >= 0 && n <= capacity_, "static_cache: length ", n, " outside [0, ", capacity_,
              "]");
  for (auto& x : len_) x = n;
}

}  // namespace kvcal
