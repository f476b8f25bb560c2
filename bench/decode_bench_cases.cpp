// The CPU half of bench/decode_bench.h: which kernel configuration a preset runs as, and the table.
#include <cstdio>
#include <sstream>

#include "bench/decode_bench.h"

namespace kvcal {

std::vector<decode_case> builtin_decode_cases() {
  std::vector<decode_case> v;
  for (bool half : {false, true}) {
    const std::string tag = half ? " (half_dequant)" : "";
    v.push_back({"fp16 (ours)" + tag, 16, 32, 0, half, ""});
    v.push_back({"kivi-4" + tag, 4, 32, 128, half, ""});
    v.push_back({"kivi-2" + tag, 2, 32, 128, half, ""});
  }
  return v;
}

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

decode_case decode_case_of(const preset_recipe& r, const std::string& name) {
  decode_case c;
  c.name = name;
  auto fail = [&](const std::string& why) {
    c.unsupported = why;
    return c;
  };
  if (r.layers.empty()) return fail("the recipe has no layers");
  const layer_recipe& l0 = r.layers[0];
  for (const auto& l : r.layers) {
    if (!l.heads.empty()) return fail("per-KV-head methods: no CUDA kernel yet");
    if (l.policy.kind != token_policy_kind::full)
      return fail(std::string("eviction (") + token_policy_name(l.policy.kind) +
                  "): no CUDA kernel yet");
    if (l.guard > 0) return fail("high-precision guard: no CUDA kernel yet");
    if (l.k.kind != l0.k.kind || l.v.kind != l0.v.kind || l.residual != l0.residual ||
        (l.k.kind == kv_method_kind::quant &&
         (l.k.quant.bits != l0.k.quant.bits || l.k.quant.group != l0.k.quant.group)) ||
        (l.v.kind == kv_method_kind::quant &&
         (l.v.quant.bits != l0.v.quant.bits || l.v.quant.group != l0.v.quant.group)))
      return fail("layers differ (mixed precision per layer): the benchmark times one layer shape");
  }
  if (auto g = quant_gap(l0.k, quant_axis::per_channel, "K"); !g.empty()) return fail(g);
  if (auto g = quant_gap(l0.v, quant_axis::per_token, "V"); !g.empty()) return fail(g);
  const bool kq = l0.k.kind == kv_method_kind::quant, vq = l0.v.kind == kv_method_kind::quant;
  if (!kq && !vq) {  // fp16 K and V
    c.bits = 16;
    return c;
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
  return c;
}

std::string decode_table_header() {
  return "| method | B | L | time (us) | MB read | TB/s | fp16 bytes / bytes read | speedup vs fp16 "
         "(ours) | speedup vs SDPA | append+compress (Mtok/s) |\n"
         "|---|---|---|---|---|---|---|---|---|---|\n";
}

std::string decode_table_row(const std::string& method, const decode_shape& s,
                             const decode_timing& t, double fp16_ours_us, double sdpa_us) {
  char buf[512];
  auto ratio = [](double a, double b) {
    char x[32];
    if (a > 0 && b > 0)
      std::snprintf(x, sizeof x, "%.2f", a / b);
    else
      std::snprintf(x, sizeof x, "-");
    return std::string(x);
  };
  char app[32] = "-";
  if (t.append_tok_s > 0) std::snprintf(app, sizeof app, "%.1f", t.append_tok_s / 1e6);
  std::snprintf(buf, sizeof buf, "| %s | %d | %d | %.1f | %.1f | %.2f | %.2f | %s | %s | %s |\n",
                method.c_str(), s.batch, s.len, t.us, t.bytes / 1e6,
                t.us > 0 ? t.bytes / (t.us * 1e-6) / 1e12 : 0.0,
                t.bytes > 0 ? t.fp16_bytes / t.bytes : 0.0, ratio(fp16_ours_us, t.us).c_str(),
                ratio(sdpa_us, t.us).c_str(), app);
  return buf;
}

}  // namespace kvcal
