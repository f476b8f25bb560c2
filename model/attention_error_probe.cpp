#include "model/attention_error_probe.h"

#include <cmath>

#include "kernels/common/error.h"

namespace kvcal {

attention_error_probe::attention_error_probe(kv_cache& inner, const model_config& cfg,
                                             at::Device device, at::ScalarType dtype,
                                             std::int64_t capacity_hint)
    : inner_(inner),
      shadow_(cfg, 1, device, dtype, capacity_hint),
      diff2_(static_cast<std::size_t>(cfg.num_hidden_layers), 0.0),
      ref2_(static_cast<std::size_t>(cfg.num_hidden_layers), 0.0) {}

void attention_error_probe::append(int layer, const kv_append& kv) {
  inner_.append(layer, kv);
  shadow_.append(layer, kv);
}

at::Tensor attention_error_probe::attend(int layer, const at::Tensor& q_rope,
                                         const at::Tensor& positions) {
  KVCAL_ASSERT(layer >= 0 && static_cast<std::size_t>(layer) < diff2_.size(),
               "attention_error_probe: layer out of range");
  at::Tensor out = inner_.attend(layer, q_rope, positions);     // [B, n_heads, T, d]
  at::Tensor exact = shadow_.attend(layer, q_rope, positions);  // [B, n_heads, T, d]
  const at::Tensor o = out.to(at::kDouble), e = exact.to(at::kDouble);
  diff2_[static_cast<std::size_t>(layer)] += (o - e).pow(2).sum().item<double>();
  ref2_[static_cast<std::size_t>(layer)] += e.pow(2).sum().item<double>();
  return out;
}

void attention_error_probe::reset() {
  inner_.reset();
  shadow_.reset();
}

std::vector<double> attention_error_probe::relative_errors() const {
  std::vector<double> r(diff2_.size(), 0.0);
  for (std::size_t i = 0; i < r.size(); ++i)
    if (ref2_[i] > 0) r[i] = std::sqrt(diff2_[i] / ref2_[i]);
  return r;
}

}  // namespace kvcal
