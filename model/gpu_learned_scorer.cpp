#include "model/gpu_learned_scorer.h"

#include "kernels/common/error.h"

namespace kvcal {

namespace {

// layers.<l>.policy.<name> as an fp32 tensor of `shape` on `device`; errors name the preset.
at::Tensor policy_tensor(const std::vector<tensor_view>& tensors, const std::string& name,
                         std::vector<std::int64_t> shape, at::Device device,
                         const std::string& source) {
  std::int64_t numel = 1;
  for (std::int64_t s : shape) numel *= s;
  for (const auto& t : tensors) {
    if (t.name != name) continue;
    KVCAL_CHECK(t.numel() == numel, source, ": tensor '", name, "' has ", t.numel(),
                " elements, the policy needs ", numel);
    std::vector<float> v = to_float(t);
    return at::from_blob(v.data(), shape, at::kFloat).clone().to(device);
  }
  KVCAL_FAIL(source, ": no tensor '", name, "' (learned eviction policy weights)");
}

}  // namespace

gpu_learned_scorer::gpu_learned_scorer(const preset_recipe& r,
                                       const std::vector<tensor_view>& tensors, at::Device device,
                                       const std::string& source) {
  KVCAL_CHECK(!r.layers.empty(), source, ": the recipe has no layers");
  const learned_params& p0 = r.layers[0].policy.learned;
  n_kv_ = static_cast<int>(r.model.n_kv_heads);
  in_dim_ = p0.in_dim;
  hidden_ = p0.mlp_hidden;
  features_ = p0.features;
  KVCAL_CHECK(n_kv_ >= 1 && in_dim_ >= 1 && hidden_ >= 0, source,
              ": learned policy needs n_kv_heads >= 1 and in_dim >= 1, got ", n_kv_, " and ",
              in_dim_);
  KVCAL_CHECK(features_ != policy_features::key || in_dim_ == r.model.head_dim, source,
              ": learned policy on key features needs in_dim = head_dim (", r.model.head_dim,
              "), got ", in_dim_);
  const std::int64_t H = n_kv_, I = in_dim_, M = hidden_;
  for (std::size_t l = 0; l < r.layers.size(); ++l) {
    const token_policy& p = r.layers[l].policy;
    KVCAL_CHECK(p.kind == token_policy_kind::learned && p.learned.features == features_ &&
                    p.learned.in_dim == in_dim_ && p.learned.mlp_hidden == hidden_,
                source, ": layers[", l,
                "]: the GPU scorer needs the learned policy with the same features, in_dim and "
                "mlp_hidden in every layer");
    const std::string pre = "layers." + std::to_string(l) + ".policy.";
    layer_weights w;
    if (M == 0) {
      w.w1 = policy_tensor(tensors, pre + "weight", {H, I}, device, source);
      w.b1 = policy_tensor(tensors, pre + "bias", {H}, device, source);
    } else {
      w.w1 = policy_tensor(tensors, pre + "fc1.weight", {M, I}, device, source);
      w.b1 = policy_tensor(tensors, pre + "fc1.bias", {M}, device, source);
      w.w2 = policy_tensor(tensors, pre + "fc2.weight", {H, M}, device, source);
      w.b2 = policy_tensor(tensors, pre + "fc2.bias", {H}, device, source);
    }
    layers_.push_back(std::move(w));
  }
}

at::Tensor gpu_learned_scorer::score(int layer, const kv_append& kv) const {
  if (features_ == policy_features::key) return score_features(layer, kv.k_pre);
  KVCAL_CHECK(kv.hidden.defined(),
              "learned eviction on hidden-state features: append() got no hidden state (the "
              "model passes it as kv_append::hidden)");
  return score_features(layer, kv.hidden);
}

at::Tensor gpu_learned_scorer::score_features(int layer, const at::Tensor& x_in) const {
  KVCAL_CHECK(layer >= 0 && layer < n_layers(), "learned scorer: layer ", layer, " of ",
              n_layers());
  const layer_weights& w = layers_[static_cast<std::size_t>(layer)];
  const at::Tensor x = x_in.to(at::kFloat);
  if (features_ == policy_features::hidden) {
    KVCAL_CHECK(x.dim() == 3 && x.size(2) == in_dim_, "learned scorer: layer ", layer,
                ": hidden state must be [B, T, ", in_dim_, "], got ", x.sizes());
    // [B, T, n_kv] -> [B, n_kv, T]
    at::Tensor s = at::linear(x, w.w1, w.b1);
    if (hidden_ > 0) s = at::linear(at::relu(s), w.w2, w.b2);
    return s.transpose(1, 2).contiguous();
  }
  KVCAL_CHECK(x.dim() == 4 && x.size(1) == n_kv_ && x.size(3) == in_dim_, "learned scorer: layer ",
              layer, ": keys must be [B, ", n_kv_, ", T, ", in_dim_, "], got ", x.sizes());
  if (hidden_ == 0)  // [B, n_kv, T, d] x [n_kv, d, 1] -> [B, n_kv, T]
    return at::matmul(x, w.w1.unsqueeze(-1)).squeeze(-1).add_(w.b1.view({n_kv_, 1}));
  at::Tensor h = at::relu(at::linear(x, w.w1, w.b1));  // [B, n_kv, T, hidden]
  return at::matmul(h, w.w2.unsqueeze(-1)).squeeze(-1).add_(w.b2.view({n_kv_, 1}));
}

std::size_t gpu_learned_scorer::bytes() const {
  std::size_t n = 0;
  for (const auto& w : layers_)
    for (const at::Tensor* t : {&w.w1, &w.b1, &w.w2, &w.b2})
      if (t->defined()) n += static_cast<std::size_t>(t->nbytes());
  return n;
}

}  // namespace kvcal
