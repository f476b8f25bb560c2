// model/gpu_learned_scorer against the CPU runtime's learned scorer (runtime/eviction/learned.h,
// double accumulation, one token and head at a time) on random weights and features: linear and
// MLP, hidden-state and key features, awkward sizes. The same cases run on CPU tensors (label cpu)
// and on CUDA (label gpu: test cases named "CUDA", skipped without a GPU). The bound, 1e-5 of
// max(1, |score|), is fp32 accumulation over <= 97 terms of O(1 / sqrt(in_dim)) products (a few
// 1e-7), with room for cuBLAS's summation order; TF32 stays off.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/common/error.h"
#include "model/gpu_learned_scorer.h"
#include "model/torch_util.h"
#include "runtime/eviction/learned.h"
#include "tests/torch_doctest.h"

using namespace kvcal;

namespace {

// A learned-policy recipe of L layers and its random tensors (views into `keep`).
struct policy_set : tensor_views_f32 {
  preset_recipe r;
};

policy_set make_set(int L, int H, int d, policy_features f, std::int64_t in_dim,
                    std::int64_t hidden) {
  policy_set s;
  s.r.model.n_layers = L;
  s.r.model.n_kv_heads = H;
  s.r.model.head_dim = d;
  layer_recipe lr;
  lr.policy.kind = token_policy_kind::learned;
  lr.policy.learned.features = f;
  lr.policy.learned.in_dim = in_dim;
  lr.policy.learned.mlp_hidden = hidden;
  lr.budget.kind = budget_kind::retain;
  lr.budget.retain = 0.125;
  s.r.layers.assign(static_cast<std::size_t>(L), lr);
  const double sc = 1.0 / std::sqrt(static_cast<double>(in_dim));
  for (int l = 0; l < L; ++l) {
    const std::string pre = "layers." + std::to_string(l) + ".policy.";
    if (hidden == 0) {
      s.add(pre + "weight", at::randn({H, in_dim}).mul_(sc));
      s.add(pre + "bias", at::randn({H}));
    } else {
      s.add(pre + "fc1.weight", at::randn({hidden, in_dim}).mul_(sc));
      s.add(pre + "fc1.bias", at::randn({hidden}).mul_(0.3));
      s.add(pre + "fc2.weight", at::randn({H, hidden}).mul_(1.0 / std::sqrt(double(hidden))));
      s.add(pre + "fc2.bias", at::randn({H}));
    }
  }
  return s;
}

// Largest |gpu - cpu| / max(1, |cpu|) over every (b, head, t) of every layer.
double max_rel_error(const at::Device dev, policy_features f, std::int64_t hidden) {
  const int L = 2, H = 3, d = 24;
  const std::int64_t B = 2, T = 17, hid = 97;
  const std::int64_t in_dim = f == policy_features::key ? d : hid;
  const policy_set s = make_set(L, H, d, f, in_dim, hidden);
  const gpu_learned_scorer sc(s.r, s.views, dev, "test");
  CHECK(sc.n_layers() == L);
  CHECK(sc.n_kv_heads() == H);
  double worst = 0;
  for (int l = 0; l < L; ++l) {
    const learned_policy ref(s.r.layers[static_cast<std::size_t>(l)], 0, l, s.views, H, d, "test");
    kv_append kv;
    kv.k_pre = at::randn({B, H, T, d});  // [B, n_kv, T, d]
    kv.hidden = at::randn({B, T, hid});  // [B, T, hidden]
    kv.k_rope = kv.v = at::zeros_like(kv.k_pre);
    kv_append on = kv;
    on.k_pre = kv.k_pre.to(dev);
    on.hidden = kv.hidden.to(dev, at::kHalf).to(at::kFloat);  // a half-precision model's hidden
    kv.hidden = on.hidden.cpu();
    const at::Tensor got = sc.score(l, on).cpu();  // [B, n_kv, T]
    REQUIRE(got.sizes() == at::IntArrayRef({B, H, T}));
    REQUIRE((got.scalar_type() == at::kFloat));
    const at::Tensor kc = kv.k_pre.contiguous(), hc = kv.hidden.contiguous();
    for (std::int64_t b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h)
        for (std::int64_t t = 0; t < T; ++t) {
          const float* x = f == policy_features::key ? kc[b][h][t].data_ptr<float>()
                                                     : hc[b][t].data_ptr<float>();
          const double want = ref.score(h, x);
          const double g = got[b][h][t].item<double>();
          worst = std::max(worst, std::fabs(g - want) / std::max(1.0, std::fabs(want)));
        }
  }
  return worst;
}

void compare_all(const at::Device dev) {
  for (const policy_features f : {policy_features::hidden, policy_features::key})
    for (const std::int64_t hidden : {std::int64_t{0}, std::int64_t{13}}) {
      CAPTURE(policy_features_name(f));
      CAPTURE(hidden);
      at::manual_seed(11 + hidden);
      const double e = max_rel_error(dev, f, hidden);
      const std::string what =
          dev.str() + " " + policy_features_name(f) + (hidden ? " MLP" : " linear");
      MESSAGE(what, ": max relative score error vs learned_policy::score ", e);
      CHECK(e <= 1e-5);
    }
}

}  // namespace

TEST_CASE("learned scorer on CPU tensors equals learned_policy::score") {
  compare_all(at::kCPU);
}

TEST_CASE("learned scorer on CUDA equals learned_policy::score") {
  if (!at::hasCUDA()) {
    MESSAGE("skipped: libtorch has no CUDA or no GPU is visible");
    return;
  }
  compare_all(at::Device(at::kCUDA, 0));
}

TEST_CASE("learned scorer: bad presets and inputs are refused with the reason") {
  at::manual_seed(3);
  policy_set s = make_set(2, 3, 24, policy_features::hidden, 40, 0);
  auto refused = [](auto&& f, const std::string& what) {
    std::string msg;
    try {
      f();
    } catch (const error& e) {
      msg = e.what();
    }
    INFO(msg);
    CHECK(msg.find(what) != std::string::npos);
  };
  {  // a missing tensor, named
    policy_set m = s;
    m.views.pop_back();
    refused([&] { gpu_learned_scorer(m.r, m.views, at::kCPU, "p.safetensors"); },
            "p.safetensors: no tensor 'layers.1.policy.bias'");
  }
  {  // layers differ
    policy_set m = s;
    m.r.layers[1].policy.learned.in_dim = 41;
    refused([&] { gpu_learned_scorer(m.r, m.views, at::kCPU, "p"); }, "layers[1]");
  }
  {  // key features need in_dim = head_dim
    policy_set m = s;
    for (auto& l : m.r.layers) l.policy.learned.features = policy_features::key;
    refused([&] { gpu_learned_scorer(m.r, m.views, at::kCPU, "p"); }, "in_dim = head_dim (24)");
  }
  const gpu_learned_scorer sc(s.r, s.views, at::kCPU, "p");
  kv_append kv;
  kv.k_pre = at::randn({1, 3, 2, 24});
  refused([&] { sc.score(0, kv); }, "got no hidden state");
  kv.hidden = at::randn({1, 2, 39});
  refused([&] { sc.score(0, kv); }, "hidden state must be [B, T, 40]");
  kv.hidden = at::randn({1, 2, 40});
  CHECK(sc.score(1, kv).sizes() == at::IntArrayRef({1, 3, 2}));
  refused([&] { sc.score(2, kv); }, "layer 2 of 2");
  CHECK(sc.bytes() == 2 * (3 * 40 + 3) * sizeof(float));
}
