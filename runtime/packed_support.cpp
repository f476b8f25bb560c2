#include "runtime/packed_support.h"

#include <algorithm>
#include <cstdint>
#include <sstream>

namespace kvcal {

namespace {

// Why one K or V method is not what the kernels read (empty: it is).
std::string quant_gap(const kv_method& m, quant_axis want, const char* what) {
  if (m.kind == kv_method_kind::pca) return std::string(what) + " PCA latent: no CUDA kernel yet";
  if (m.kind == kv_method_kind::ae) return std::string(what) + " autoencoder: no CUDA kernel yet";
  if (m.kind != kv_method_kind::quant) return "";
  std::ostringstream s;
  if (m.quant.axis != want)
    s << what << " quantized " << quant_axis_name(m.quant.axis) << " (the kernels read "
      << quant_axis_name(want) << ")";
  else if (m.quant.symmetric)
    s << what << " symmetric quantization (the kernels read asymmetric records)";
  else if (m.quant.bits != 2 && m.quant.bits != 4 && m.quant.bits != 8)
    s << what << " " << m.quant.bits << "-bit (the kernels read 2, 4 or 8)";
  return s.str();
}

}  // namespace

std::string packed_config_of(const preset_recipe& r, packed_config* out) {
  packed_config c;
  auto fail = [](const std::string& why) { return why; };
  if (r.layers.empty()) return fail("the recipe has no layers");
  const layer_recipe& l0 = r.layers[0];
  for (const auto& l : r.layers) {
    if (!l.heads.empty()) return fail("per-KV-head methods: no CUDA kernel yet");
    if (l.policy.kind != token_policy_kind::full && l.policy.kind != token_policy_kind::h2o &&
        l.policy.kind != token_policy_kind::window)
      return fail(std::string("eviction (") + token_policy_name(l.policy.kind) +
                  "): no CUDA kernel yet (h2o and window only)");
    if (l.guard > 0) return fail("high-precision guard: no CUDA kernel yet");
    if (l.policy.kind != l0.policy.kind || l.policy.heavy != l0.policy.heavy ||
        l.policy.sinks != l0.policy.sinks || l.policy.recent != l0.policy.recent ||
        l.budget.kind != l0.budget.kind || l.budget.tokens != l0.budget.tokens ||
        l.budget.retain != l0.budget.retain)
      return fail("layers differ in token policy or budget: the kernels take one for all");
    if (!l.head_budgets.empty()) return fail("per-KV-head budgets: no CUDA eviction yet");
    if (l.policy.kind == token_policy_kind::h2o && l.budget.kind == budget_kind::none)
      return fail("h2o without a budget: nothing to evict");
    if (l.policy.kind == token_policy_kind::full && l.budget.kind != budget_kind::none)
      return fail("token budget without an evicting policy: no CUDA eviction");
    if (l.k.kind != l0.k.kind || l.v.kind != l0.v.kind || l.residual != l0.residual ||
        (l.k.kind == kv_method_kind::quant &&
         (l.k.quant.bits != l0.k.quant.bits || l.k.quant.group != l0.k.quant.group)) ||
        (l.v.kind == kv_method_kind::quant &&
         (l.v.quant.bits != l0.v.quant.bits || l.v.quant.group != l0.v.quant.group)))
      return fail(
          "layers differ (mixed precision per layer): the kernels take one configuration for all");
  }
  if (auto g = quant_gap(l0.k, quant_axis::per_channel, "K"); !g.empty()) return fail(g);
  if (auto g = quant_gap(l0.v, quant_axis::per_token, "V"); !g.empty()) return fail(g);
  if (r.adaptive.enabled) return fail("adaptive compress_after / keep_recent: not on the GPU yet");
  const bool kq = l0.k.kind == kv_method_kind::quant, vq = l0.v.kind == kv_method_kind::quant;
  const bool evicts = l0.policy.kind == token_policy_kind::h2o;
  const bool window = l0.policy.kind == token_policy_kind::window;
  if ((evicts || window) && (kq || vq))
    return fail(std::string(evicts ? "h2o" : "window") +
                " eviction with quantized K / V: the GPU evicts fp16 caches only");
  if (!kq && !vq) {  // fp16 K and V
    c.bits = 16;
    if (window) {
      if (l0.policy.sinks < 0 || l0.policy.recent < 0 || l0.policy.sinks + l0.policy.recent < 1)
        return fail("window eviction needs sinks + recent >= 1");
      c.window = true;
      c.sinks = static_cast<int>(l0.policy.sinks);
      c.recent = static_cast<int>(l0.policy.recent);
    }
    if (evicts) {
      c.h2o = true;
      c.heavy = l0.policy.heavy;
      c.residual = static_cast<int>(l0.residual);
      if (l0.budget.kind == budget_kind::retain) {
        if (!(l0.budget.retain > 0.0 && l0.budget.retain <= 1.0))
          return fail("h2o budget retain " + std::to_string(l0.budget.retain) +
                      " (the kernels need (0, 1])");
        c.retain = l0.budget.retain;
      } else {
        c.tokens = static_cast<int>(std::max<std::int64_t>(1, l0.budget.tokens));
      }
    }
    *out = c;
    return "";
  }
  if (kq != vq) return fail("only one of K / V quantized: the kernels quantize both");
  if (l0.k.quant.bits != l0.v.quant.bits)
    return fail("K and V at different bit widths: the kernels use one width");
  if (l0.k.quant.group != l0.v.quant.group)
    return fail("K and V with different groups: the kernels use one group size");
  const int g = l0.k.quant.group;
  if (g != 32 && g != 64 && g != 128) return fail("group " + std::to_string(g) + " (32, 64, 128)");
  c.bits = l0.k.quant.bits;
  c.group = g;
  c.residual = static_cast<int>(l0.residual);
  *out = c;
  return "";
}

}  // namespace kvcal
