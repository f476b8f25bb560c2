#include "runtime/packed_support.h"

#include <algorithm>
#include <cstdint>
#include <sstream>

#include "kernels/common/error.h"

namespace kvcal {

namespace {

// Why one K or V method is not what the kernels read (empty: it is).
std::string quant_gap(const kv_method& m, quant_axis want, const char* what) {
  if (m.kind == kv_method_kind::ae && m.ae.hidden > 0)
    return std::string(what) + " MLP autoencoder (hidden " + std::to_string(m.ae.hidden) +
           "): not linear, no CUDA kernel (the kernels attend linear latents only)";
  if (m.kind != kv_method_kind::quant) return "";  // fp16 or a linear latent (checked apart)
  std::ostringstream s;
  if (m.quant.axis != want)
    s << what << " quantized " << quant_axis_name(m.quant.axis) << " (the kernels read "
      << quant_axis_name(want) << ")";
  else if (m.quant.symmetric)
    s << what << " symmetric quantization (the kernels read asymmetric records)";
  else if (m.quant.bits != 2 && m.quant.bits != 3 && m.quant.bits != 4 && m.quant.bits != 8)
    s << what << " " << m.quant.bits << "-bit (the kernels read 2, 3, 4 or 8)";
  return s.str();
}

// Why a V method is not a latent the kernels read (empty: it is).
std::string latent_gap(const kv_method& m, int head_dim) {
  const bool pca = m.kind == kv_method_kind::pca;
  if (!pca && m.ae.hidden > 0)
    return "V MLP autoencoder (hidden " + std::to_string(m.ae.hidden) +
           "): not linear, no CUDA kernel (the kernels attend linear latents only)";
  const int rank = pca ? m.pca.rank : m.ae.latent;
  const int bits = pca ? m.pca.latent_bits : m.ae.latent_bits;
  if (rank != 0 && rank != 16 && rank != 32 && rank != 64 && rank != 96 && rank != 128)
    return "V latent rank " + std::to_string(rank) + " (the kernels take 16, 32, 64, 96 or 128)";
  if (head_dim > 0 && rank > head_dim)
    return "V latent rank " + std::to_string(rank) + " above head_dim " + std::to_string(head_dim);
  if (bits != 16 && bits != 8 && bits != 4)
    return "V latent " + std::to_string(bits) + "-bit (the kernels read 16, 8 or 4)";
  return "";
}

// Why a K method is not a latent the K latent mode reads (empty: it is). The kernel
// (decode_attention_rd.cu) reconstructs keys before RoPE, register-direct only: head_dim 128.
std::string k_latent_gap(const kv_method& m, int head_dim) {
  const bool pca = m.kind == kv_method_kind::pca;
  const int rank = pca ? m.pca.rank : m.ae.latent;
  const int bits = pca ? m.pca.latent_bits : m.ae.latent_bits;
  if (rank != 0 && rank != 16 && rank != 32 && rank != 64 && rank != 96 && rank != 128)
    return "K latent rank " + std::to_string(rank) + " (the kernels take 16, 32, 64, 96 or 128)";
  if (head_dim != 128)
    return "K latent mode at head_dim " + std::to_string(head_dim) +
           " (the register-direct kernel: head_dim 128)";
  if (bits != 16 && bits != 8 && bits != 4)
    return "K latent " + std::to_string(bits) + "-bit (the kernels read 16, 8 or 4)";
  return "";
}

bool same_method(const kv_method& a, const kv_method& b) {
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case kv_method_kind::quant:
      return a.quant.bits == b.quant.bits && a.quant.group == b.quant.group;
    case kv_method_kind::pca:
      return a.pca.rank == b.pca.rank && a.pca.latent_bits == b.pca.latent_bits;
    case kv_method_kind::ae:
      return a.ae.latent == b.ae.latent && a.ae.latent_bits == b.ae.latent_bits &&
             a.ae.hidden == b.ae.hidden;
    default:
      return true;
  }
}

}  // namespace

latent_map_set packed_latent_maps(const preset_recipe& r, const std::vector<tensor_view>& tensors,
                                  bool value, const std::string& source) {
  const int d = static_cast<int>(r.model.head_dim);
  latent_map_set maps(r.layers.size());
  for (std::size_t l = 0; l < r.layers.size(); ++l) {
    const layer_recipe& lr = r.layers[l];
    for (std::int64_t h = 0; h < r.model.n_kv_heads; ++h) {
      const kv_method& m =
          value ? lr.v_of(static_cast<std::size_t>(h)) : lr.k_of(static_cast<std::size_t>(h));
      KVCAL_CHECK(
          m.kind == kv_method_kind::pca || (m.kind == kv_method_kind::ae && m.ae.hidden == 0),
          source, ": layers[", l, "] ", value ? "V" : "K", " head ", h,
          " is not a PCA / linear autoencoder latent");
      const std::string prefix =
          "layers." + std::to_string(l) + (value ? ".v" : ".k") + ".heads." + std::to_string(h);
      const auto codec = make_stream_codec(m, d, tensors, prefix, source);
      KVCAL_ASSERT(codec->maps(), "a linear codec without maps");
      maps[l].push_back(*codec->maps());
    }
  }
  return maps;
}

std::string packed_config_of(const preset_recipe& r, packed_config* out) {
  packed_config c;
  auto fail = [](const std::string& why) { return why; };
  if (r.layers.empty()) return fail("the recipe has no layers");
  const layer_recipe& l0 = r.layers[0];
  for (const auto& l : r.layers) {
    if (!l.heads.empty()) return fail("per-KV-head methods: no CUDA kernel yet");
    if (l.policy.kind != token_policy_kind::full && l.policy.kind != token_policy_kind::h2o &&
        l.policy.kind != token_policy_kind::window && l.policy.kind != token_policy_kind::learned)
      return fail(std::string("eviction (") + token_policy_name(l.policy.kind) +
                  "): no CUDA kernel yet (h2o, window and learned only)");
    if (l.guard > 0) return fail("high-precision guard: no CUDA kernel yet");
    if (l.policy.kind != l0.policy.kind || l.policy.heavy != l0.policy.heavy ||
        l.policy.sinks != l0.policy.sinks || l.policy.recent != l0.policy.recent ||
        l.budget.kind != l0.budget.kind || l.budget.tokens != l0.budget.tokens ||
        l.budget.retain != l0.budget.retain ||
        l.policy.learned.features != l0.policy.learned.features ||
        l.policy.learned.in_dim != l0.policy.learned.in_dim ||
        l.policy.learned.mlp_hidden != l0.policy.learned.mlp_hidden ||
        l.policy.learned.threshold != l0.policy.learned.threshold)
      return fail("layers differ in token policy or budget: the kernels take one for all");
    if (!l.head_budgets.empty()) return fail("per-KV-head budgets: no CUDA eviction yet");
    if (l.policy.kind == token_policy_kind::h2o && l.budget.kind == budget_kind::none)
      return fail("h2o without a budget: nothing to evict");
    // A threshold evicts every token scored below it, so the rows held are unbounded (the GPU
    // cache allocates R + 1 rows for a budget R and drops one per step).
    if (l.policy.kind == token_policy_kind::learned && l.policy.learned.threshold)
      return fail(
          "learned eviction with a threshold: the GPU cache evicts to a token budget only (use "
          "budget retain / tokens without threshold, or the CPU runtime)");
    if (l.policy.kind == token_policy_kind::learned && l.budget.kind == budget_kind::none)
      return fail("learned eviction without a budget: nothing to evict");
    if (l.policy.kind == token_policy_kind::full && l.budget.kind != budget_kind::none)
      return fail("token budget without an evicting policy: no CUDA eviction");
    if (!same_method(l.k, l0.k) || !same_method(l.v, l0.v) || l.residual != l0.residual)
      return fail(
          "layers differ (mixed precision per layer): the kernels take one configuration for all");
  }
  if (auto g = quant_gap(l0.k, quant_axis::per_channel, "K"); !g.empty()) return fail(g);
  c.residual = static_cast<int>(l0.residual);
  if (r.adaptive.enabled) {  // as the CPU cache: window max(residual, keep_recent), dormant start
    if (r.adaptive.keep_recent > c.residual) c.residual = static_cast<int>(r.adaptive.keep_recent);
    c.compress_after = r.adaptive.compress_after;
  }
  const bool k_latent = l0.k.kind == kv_method_kind::pca || l0.k.kind == kv_method_kind::ae;
  const bool v_latent = l0.v.kind == kv_method_kind::pca || l0.v.kind == kv_method_kind::ae;
  if (k_latent && !v_latent)
    return fail("K latent without a V latent: the kernels take K and V latents together");
  if (v_latent) {  // V latent mode (and K latent mode)
    if (l0.policy.kind != token_policy_kind::full)
      return fail("eviction with a V latent: the GPU evicts fp16 caches only");
    if (auto g = latent_gap(l0.v, static_cast<int>(r.model.head_dim)); !g.empty()) return fail(g);
    const bool pca = l0.v.kind == kv_method_kind::pca;
    c.v_latent_kind = l0.v.kind;
    c.v_latent_rank = pca ? l0.v.pca.rank : l0.v.ae.latent;
    c.v_latent_bits = pca ? l0.v.pca.latent_bits : l0.v.ae.latent_bits;
    if (k_latent) {  // K latent mode: the V latent mode's rank, its own latent bits
      if (auto g = k_latent_gap(l0.k, static_cast<int>(r.model.head_dim)); !g.empty())
        return fail(g);
      const bool kpca = l0.k.kind == kv_method_kind::pca;
      c.k_latent_kind = l0.k.kind;
      c.k_latent_rank = kpca ? l0.k.pca.rank : l0.k.ae.latent;
      c.k_latent_bits = kpca ? l0.k.pca.latent_bits : l0.k.ae.latent_bits;
      if (c.k_latent_rank != c.v_latent_rank)
        return fail("K latent rank " + std::to_string(c.k_latent_rank) + " with V latent rank " +
                    std::to_string(c.v_latent_rank) + ": the kernels take one rank for both");
      c.bits = 16;  // K records are latents: no KIVI width (k_bits is unused)
    } else if (l0.k.kind == kv_method_kind::quant) {
      const int g = l0.k.quant.group;
      if (l0.k.quant.bits == 3) return fail("3-bit K with a V latent: no CUDA kernel yet");
      if (g != 32 && g != 64 && g != 128)
        return fail("K group " + std::to_string(g) + " (32, 64, 128)");
      c.bits = l0.k.quant.bits;
      c.group = g;
    } else {
      c.bits = 16;  // fp16 K: every key stays in the window ring
    }
    *out = c;
    return "";
  }
  if (auto g = quant_gap(l0.v, quant_axis::per_token, "V"); !g.empty()) return fail(g);
  const bool kq = l0.k.kind == kv_method_kind::quant, vq = l0.v.kind == kv_method_kind::quant;
  const bool evicts = l0.policy.kind == token_policy_kind::h2o;
  const bool window = l0.policy.kind == token_policy_kind::window;
  const bool learned = l0.policy.kind == token_policy_kind::learned;
  if ((evicts || window || learned) && (kq || vq))
    return fail(std::string(token_policy_name(l0.policy.kind)) +
                " eviction with quantized K / V: the GPU evicts fp16 caches only");
  // The CPU's evicting layers wait while the context is <= compress_after and protect
  // max(residual, keep_recent): neither is in the GPU cache's rule.
  if ((evicts || window || learned) && r.adaptive.enabled)
    return fail(std::string(token_policy_name(l0.policy.kind)) +
                " eviction with the adaptive mode: not in the GPU cache");
  if (!kq && !vq) {  // fp16 K and V
    c.bits = 16;
    c.residual = 0;  // fp16: nothing is compressed (H2O's recent share reads the residual below)
    c.compress_after = -1;
    if (window) {
      if (l0.policy.sinks < 0 || l0.policy.recent < 0 || l0.policy.sinks + l0.policy.recent < 1)
        return fail("window eviction needs sinks + recent >= 1");
      c.window = true;
      c.sinks = static_cast<int>(l0.policy.sinks);
      c.recent = static_cast<int>(l0.policy.recent);
    }
    if (evicts || learned) {
      c.h2o = evicts;
      c.learned = learned;
      c.heavy = evicts ? l0.policy.heavy : 1.0;  // learned: the fp16 window is the recent share
      c.residual = static_cast<int>(l0.residual);
      if (l0.budget.kind == budget_kind::retain) {
        if (!(l0.budget.retain > 0.0 && l0.budget.retain <= 1.0))
          return fail(std::string(token_policy_name(l0.policy.kind)) + " budget retain " +
                      std::to_string(l0.budget.retain) + " (the kernels need (0, 1])");
        c.retain = l0.budget.retain;
      } else {
        c.tokens = static_cast<int>(std::max<std::int64_t>(1, l0.budget.tokens));
      }
    }
    *out = c;
    return "";
  }
  if (kq != vq) return fail("only one of K / V quantized: the kernels quantize both");
  if (l0.v.quant.bits > l0.k.quant.bits)
    return fail("V " + std::to_string(l0.v.quant.bits) + "-bit wider than K " +
                std::to_string(l0.k.quant.bits) + "-bit: the kernels take V bits <= K bits");
  if ((l0.k.quant.bits == 3 || l0.v.quant.bits != l0.k.quant.bits) && r.model.head_dim != 128)
    return fail("3-bit or mixed K / V widths: the register-direct kernel only (head_dim 128, got " +
                std::to_string(r.model.head_dim) + ")");
  if (l0.k.quant.group != l0.v.quant.group)
    return fail("K and V with different groups: the kernels use one group size");
  const int g = l0.k.quant.group;
  if (g != 32 && g != 64 && g != 128) return fail("group " + std::to_string(g) + " (32, 64, 128)");
  c.bits = l0.k.quant.bits;
  c.v_bits = l0.v.quant.bits;
  c.group = g;
  *out = c;
  return "";
}

}  // namespace kvcal
