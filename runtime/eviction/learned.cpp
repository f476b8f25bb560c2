#include "runtime/eviction/learned.h"

#include <algorithm>

#include "kernels/common/error.h"

namespace kvcal {

namespace {

std::vector<float> policy_tensor(const std::vector<tensor_view>& tensors, const std::string& name,
                                 std::size_t numel, const std::string& source) {
  for (const auto& t : tensors) {
    if (t.name != name) continue;
    KVCAL_CHECK(static_cast<std::size_t>(t.numel()) == numel, source, ": tensor '", name, "' has ",
                t.numel(), " elements, the policy needs ", numel);
    return to_float(t);
  }
  KVCAL_FAIL(source, ": no tensor '", name, "' (learned eviction policy weights)");
}

}  // namespace

learned_policy::learned_policy(const layer_recipe& lr, std::int64_t window, int layer,
                               const std::vector<tensor_view>& tensors, int n_kv_heads,
                               int head_dim, const std::string& source)
    : eviction_policy(lr, window),
      n_kv_(n_kv_heads),
      in_dim_(lr.policy.learned.in_dim),
      hidden_(lr.policy.learned.mlp_hidden) {
  const auto& p = lr.policy.learned;
  KVCAL_CHECK(in_dim_ >= 1, source, ": layers[", layer, "].policy.learned.in_dim must be >= 1");
  KVCAL_CHECK(p.features != policy_features::key || in_dim_ == head_dim, source, ": layers[", layer,
              "].policy.learned: key features need in_dim = head_dim (", head_dim, "), got ",
              in_dim_);
  const std::string pre = "layers." + std::to_string(layer) + ".policy.";
  const std::size_t H = static_cast<std::size_t>(n_kv_heads);
  const std::size_t I = static_cast<std::size_t>(in_dim_);
  if (hidden_ == 0) {
    w1_ = policy_tensor(tensors, pre + "weight", H * I, source);
    b1_ = policy_tensor(tensors, pre + "bias", H, source);
  } else {
    const std::size_t M = static_cast<std::size_t>(hidden_);
    w1_ = policy_tensor(tensors, pre + "fc1.weight", M * I, source);
    b1_ = policy_tensor(tensors, pre + "fc1.bias", M, source);
    w2_ = policy_tensor(tensors, pre + "fc2.weight", H * M, source);
    b2_ = policy_tensor(tensors, pre + "fc2.bias", H, source);
    h_.resize(M);
  }
}

double learned_policy::score(int head, const float* x) const {
  const std::size_t I = static_cast<std::size_t>(in_dim_);
  const std::size_t h = static_cast<std::size_t>(head);
  if (hidden_ == 0) {
    double s = b1_[h];
    for (std::size_t i = 0; i < I; ++i) s += static_cast<double>(w1_[h * I + i]) * x[i];
    return s;
  }
  const std::size_t M = static_cast<std::size_t>(hidden_);
  for (std::size_t m = 0; m < M; ++m) {
    double a = b1_[m];
    for (std::size_t i = 0; i < I; ++i) a += static_cast<double>(w1_[m * I + i]) * x[i];
    h_[m] = static_cast<float>(std::max(0.0, a));
  }
  double s = b2_[h];
  for (std::size_t m = 0; m < M; ++m) s += static_cast<double>(w2_[h * M + m]) * h_[m];
  return s;
}

double learned_policy::on_append(int head, std::int64_t, const float* key_pre,
                                 const float* maybe_hidden, std::int64_t) const {
  if (features() == policy_features::key) return score(head, key_pre);
  KVCAL_CHECK(maybe_hidden != nullptr,
              "learned eviction on hidden-state features: append() got no hidden state (the "
              "model passes it as kv_append::hidden)");
  return score(head, maybe_hidden);
}

}  // namespace kvcal
