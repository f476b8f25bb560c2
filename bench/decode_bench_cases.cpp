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

decode_case decode_case_of(const preset_recipe& r, const std::string& name) {
  decode_case c;
  c.name = name;
  packed_config pc;
  // K latents (K and V latents of one rank, head_dim 128) are mapped and refused there too.
  c.unsupported = packed_config_of(r, &pc);
  c.k_latent = !r.layers.empty() && (r.layers[0].k.kind == kv_method_kind::pca ||
                                     r.layers[0].k.kind == kv_method_kind::ae);
  c.k_latent_ae = c.k_latent && r.layers[0].k.kind == kv_method_kind::ae;
  if (c.unsupported.empty() && pc.k_latent() && pc.compress_after >= 0)
    c.unsupported = "K latent with an adaptive schedule: not in the bench yet";
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
    c.k_latent_rank = pc.k_latent_rank;
    c.k_latent_bits = pc.k_latent_bits;
  }
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
