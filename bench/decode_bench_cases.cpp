// The CPU half of bench/decode_bench.h: which kernel configuration a preset runs as, and the table.
#include <cstdio>
#include <sstream>

#include "bench/decode_bench.h"
#include "runtime/packed_support.h"

namespace kvcal {

std::vector<decode_case> builtin_decode_cases() {
  std::vector<decode_case> v;
  for (bool half : {false, true}) {
    const std::string tag = half ? " (half_dequant, unpipelined)" : " (fp32 dequant)";
    v.push_back({"fp16 (ours)" + tag, 16, 32, 0, half, "", false});
    v.push_back({"kivi-4" + tag, 4, 32, 128, half, "", false});
    v.push_back({"kivi-2" + tag, 2, 32, 128, half, "", false});
  }
  v.push_back({"kivi-4 (pipelined)", 4, 32, 128, true, "", true});
  v.push_back({"kivi-2 (pipelined)", 2, 32, 128, true, "", true});
  v.push_back({"kivi-4 (register-direct)", 4, 32, 128, true, "", true, true});
  v.push_back({"kivi-2 (register-direct)", 2, 32, 128, true, "", true, true});
  v.push_back({"fp16 (ours) (register-direct)", 16, 32, 0, true, "", true, true});
  for (decode_case c : bench_only_decode_cases()) {
    c.name += " (register-direct)";
    v.push_back(c);
  }
  // V latent mode on a synthetic rank-32 PCA basis: knlp-v-pca-int8's layout (K fp16, window
  // 256) and the hybrid-k2-vpca8 template's (KIVI 2-bit K, residual 128); the smem-tile kernel,
  // then the register-direct one.
  for (bool rd : {false, true}) {
    const std::string tag = rd ? " (register-direct)" : "";
    // V: PCA rank 32, int8 latents; K at k_bits, fp16 window `residual`.
    const auto pca_v = [&](const std::string& name, int k_bits, int residual) {
      decode_case c{name + tag, k_bits, 32, residual, true, "", false, rd};
      c.v_latent = true;
      c.v_latent_rank = 32;
      c.v_latent_bits = 8;
      v.push_back(c);
    };
    pca_v("V PCA r32 int8 + K fp16 (knlp, synthetic)", 16, 256);
    pca_v("V PCA r32 int8 + K kivi-2 (hybrid, synthetic)", 2, 128);
  }
  // K latent mode (register-direct only): ae-16's layout (K and V latents of rank 16, fp16, no
  // window), then PCA K and V of rank 32, int8, window 256 (knlp's V with K compressed too).
  const auto kv_latent = [&](const std::string& name, int rank, int bits, int residual) {
    decode_case c{name + " (register-direct)", 16, 32, residual, true, "", true, true};
    c.v_latent = c.k_latent = true;
    c.v_latent_rank = c.k_latent_rank = rank;
    c.v_latent_bits = c.k_latent_bits = bits;
    v.push_back(c);
  };
  kv_latent("K+V latent r16 fp16 (ae-16, synthetic)", 16, 16, 0);
  kv_latent("K+V PCA r32 int8 (synthetic)", 32, 8, 256);
  return v;
}

std::vector<decode_case> bench_only_decode_cases() {
  decode_case kivi3{"kivi-3", 3, 32, 128, true, "", true, true};
  decode_case k3v2{"k3v2", 3, 32, 128, true, "", true, true};
  k3v2.v_bits = 2;
  return {kivi3, k3v2};
}

namespace {

// K latent (PCA or linear AE keys): why the kernels cannot run it (empty: they can), else its
// rank / bits. packed_config_of does not map K latents, so the bench checks the rest of the recipe
// with K as fp16 and adds the K latent mode itself.
std::string k_latent_of(const kv_method& k, int head_dim, int* rank, int* bits) {
  const bool pca = k.kind == kv_method_kind::pca;
  if (!pca && k.ae.hidden > 0)
    return "K MLP autoencoder (hidden " + std::to_string(k.ae.hidden) +
           "): not linear, no CUDA kernel (the kernels attend linear latents only)";
  *rank = pca ? k.pca.rank : k.ae.latent;
  *bits = pca ? k.pca.latent_bits : k.ae.latent_bits;
  if (*rank != 0 && *rank != 16 && *rank != 32 && *rank != 64 && *rank != 96 && *rank != 128)
    return "K latent rank " + std::to_string(*rank) + " (the kernels take 16, 32, 64, 96 or 128)";
  if (*rank > head_dim || head_dim != 128)
    return "K latent mode at head_dim " + std::to_string(head_dim) +
           " (the register-direct kernel: head_dim 128)";
  if (*bits != 16 && *bits != 8 && *bits != 4)
    return "K latent " + std::to_string(*bits) + "-bit (the kernels read 16, 8 or 4)";
  return "";
}

}  // namespace

decode_case decode_case_of(const preset_recipe& r, const std::string& name) {
  decode_case c;
  c.name = name;
  packed_config pc;
  const bool k_latent = !r.layers.empty() && (r.layers[0].k.kind == kv_method_kind::pca ||
                                              r.layers[0].k.kind == kv_method_kind::ae);
  if (k_latent) {
    preset_recipe rk = r;  // K as fp16 for the rest of the checks (layers must agree on K too)
    const kv_method& k0 = r.layers[0].k;
    for (auto& l : rk.layers) {
      const kv_method& k = l.k;
      if (k.kind != k0.kind || k.pca.rank != k0.pca.rank ||
          k.pca.latent_bits != k0.pca.latent_bits || k.ae.latent != k0.ae.latent ||
          k.ae.latent_bits != k0.ae.latent_bits || k.ae.hidden != k0.ae.hidden)
        c.unsupported = "layers differ in the K method: the kernels take one configuration for all";
      l.k = kv_method{};
    }
    if (c.unsupported.empty())
      c.unsupported = k_latent_of(r.layers[0].k, static_cast<int>(r.model.head_dim),
                                  &c.k_latent_rank, &c.k_latent_bits);
    const kv_method_kind vk = r.layers[0].v.kind;
    if (c.unsupported.empty() && vk != kv_method_kind::pca && vk != kv_method_kind::ae)
      c.unsupported = "K latent without a V latent: the kernels take K and V latents together";
    if (c.unsupported.empty()) c.unsupported = packed_config_of(rk, &pc);
    if (c.unsupported.empty() && pc.compress_after >= 0)
      c.unsupported = "K latent with an adaptive schedule: not in the bench yet";
    c.k_latent = true;
    c.k_latent_ae = r.layers[0].k.kind == kv_method_kind::ae;
  } else {
    c.unsupported = packed_config_of(r, &pc);
  }
  if (c.unsupported.empty() && (pc.h2o || pc.window || pc.learned))  // the kernel: fp16's
    c.unsupported =
        std::string(pc.h2o      ? "h2o"
                    : pc.window ? "window"
                                : "learned") +
        " eviction: timed end to end by bench_model --kv-cache h2o,streaming-llm,learned";
  if (c.unsupported.empty()) {
    c.bits = pc.bits;
    if (pc.bits != 16 && !pc.v_latent()) c.v_bits = pc.v_bits;  // mixed widths (K3V2, ...)
    c.group = pc.group;
    c.residual = pc.residual;
    c.compress_after = pc.compress_after;
    c.v_latent = pc.v_latent();
    c.v_latent_rank = pc.v_latent_rank;
    c.v_latent_bits = pc.v_latent_bits;
    c.v_latent_ae = pc.v_latent_kind == kv_method_kind::ae;
  }
  if (c.unsupported.empty() && c.k_latent_rank != 0 && c.v_latent_rank != 0 &&
      c.k_latent_rank != c.v_latent_rank)
    c.unsupported = "K latent rank " + std::to_string(c.k_latent_rank) + " with V latent rank " +
                    std::to_string(c.v_latent_rank) + ": the kernels take one rank for both";
  return c;
}

std::string decode_table_header() {
  return "| method | B | L | time (us) | MB read | TB/s | fp16 bytes / bytes read | speedup vs "
         "fp16 "
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
