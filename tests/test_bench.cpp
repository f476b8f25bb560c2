// bench/decode_bench: which kernel configuration each shipped template runs as on the CUDA
// kernels, and clear refusals (not silent skips) for what the kernels cannot read yet; the table
// arithmetic; `kvcal bench` on a build or machine without CUDA fails with one clear message.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "bench/decode_bench.h"
#include "cli/app.h"
#include "kernels/common/cuda_device.h"
#include "presets/preset_template.h"
#include "runtime/eviction/policy.h"
#include "runtime/model_config.h"
#include "runtime/packed_support.h"
#if KVCAL_WITH_CUDA
#include "kernels/cuda/evict.h"
#endif

namespace {

kvcal::model_config ref_config() {
  return kvcal::read_model_config(std::string(KVCAL_SOURCE_DIR) +
                                  "/data/models/kvcal-ref-v1/config.json");
}

kvcal::decode_case case_of(const std::string& name) {
  const auto r = kvcal::expand_recipe(kvcal::preset_template(name), ref_config(), name,
                                      kvcal::recipe_parse_options{true});
  return kvcal::decode_case_of(r, name);
}

}  // namespace

TEST_CASE("templates map to kernel cases") {
  const auto fp16 = case_of("fp16");
  CHECK(fp16.unsupported.empty());
  CHECK(fp16.bits == 16);
  for (int bits : {2, 4}) {
    const auto c = case_of("kivi-" + std::to_string(bits));
    CHECK_MESSAGE(c.unsupported.empty(), c.unsupported);
    CHECK(c.bits == bits);
    CHECK(c.group == 32);
    CHECK(c.residual == 128);
  }
}

TEST_CASE("V latent presets map to the latent mode (runtime/packed_support)") {
  // knlp: K fp16, V PCA int8, adaptive 512 / 256: window max(residual 0, keep_recent 256), no
  // records up to 512 tokens; the rank comes from the PCA file (0 in the template).
  const auto knlp = case_of("knlp-v-pca-int8");
  CHECK_MESSAGE(knlp.unsupported.empty(), knlp.unsupported);
  CHECK(knlp.v_latent);
  CHECK(knlp.bits == 16);
  CHECK(knlp.v_latent_rank == 0);
  CHECK(knlp.v_latent_bits == 8);
  CHECK(knlp.residual == 256);
  CHECK(knlp.compress_after == 512);
  // The hybrid: KIVI 2-bit K (group 32, residual 128) + V PCA int8.
  const auto hyb = case_of("hybrid-k2-vpca8");
  CHECK_MESSAGE(hyb.unsupported.empty(), hyb.unsupported);
  CHECK(hyb.v_latent);
  CHECK(hyb.bits == 2);
  CHECK(hyb.group == 32);
  CHECK(hyb.residual == 128);
  CHECK(hyb.v_latent_bits == 8);
  CHECK(hyb.compress_after == -1);
  // KIVI presets are not latent.
  CHECK(!case_of("kivi-2").v_latent);

  kvcal::packed_config pc;
  // A linear autoencoder V (hidden 0) of latent 32, 4-bit, K KIVI 4.
  auto r = kvcal::expand_recipe(kvcal::preset_template("kivi-4"), ref_config(), "kivi-4");
  for (auto& l : r.layers) {
    l.v.kind = kvcal::kv_method_kind::ae;
    l.v.ae.latent = 32;
    l.v.ae.latent_bits = 4;
  }
  CHECK(kvcal::packed_config_of(r, &pc).empty());
  CHECK(pc.v_latent_kind == kvcal::kv_method_kind::ae);
  CHECK(pc.v_latent_rank == 32);
  CHECK(pc.v_latent_bits == 4);
  CHECK(pc.bits == 4);
  CHECK(pc.residual == 128);
  // Refused with the reason: an MLP autoencoder, a rank the kernels do not take, 2-bit latents,
  // a K latent, layers with different ranks.
  auto mlp = r;
  for (auto& l : mlp.layers) l.v.ae.hidden = 64;
  CHECK(kvcal::packed_config_of(mlp, &pc).find("MLP autoencoder") != std::string::npos);
  auto r96 = r;  // the reference model's head_dim is below 96: refused naming it
  for (auto& l : r96.layers) l.v.ae.latent = 96;
  REQUIRE(r96.model.head_dim == 64);
  CHECK(kvcal::packed_config_of(r96, &pc).find("above head_dim") != std::string::npos);
  auto r48 = r;
  for (auto& l : r48.layers) l.v.ae.latent = 48;
  CHECK(kvcal::packed_config_of(r48, &pc).find("latent rank 48") != std::string::npos);
  auto b2 = r;
  for (auto& l : b2.layers) l.v.ae.latent_bits = 2;
  CHECK(kvcal::packed_config_of(b2, &pc).find("2-bit") != std::string::npos);
  auto kpca = r;
  for (auto& l : kpca.layers) {
    l.k.kind = kvcal::kv_method_kind::pca;
    l.k.pca.rank = 32;
  }
  // A K latent: the K latent mode needs head_dim 128 (the reference model's is 64).
  CHECK(kvcal::packed_config_of(kpca, &pc).find("K latent mode at head_dim 64") !=
        std::string::npos);
  auto mixed = r;
  mixed.layers[1].v.ae.latent = 16;
  CHECK(kvcal::packed_config_of(mixed, &pc).find("layers differ") != std::string::npos);
}

// The GPU cache's latent maps read from a preset's tensors (packed_latent_maps), against the
// PCA codec's definition written out here: z = B (x - mu), x' = B^T z + mu, so enc_w = B,
// enc_b = -B mu, dec_w = B^T, dec_b = mu; bad tensors and non-latent layers refused by name.
TEST_CASE("packed_latent_maps: the preset's V PCA maps per layer and KV head; errors name it") {
  auto r = kvcal::expand_recipe(kvcal::preset_template("knlp-v-pca-int8"), ref_config(), "knlp",
                                kvcal::recipe_parse_options{true});
  const int rank = 32, d = static_cast<int>(r.model.head_dim);
  const int H = static_cast<int>(r.model.n_kv_heads), L = static_cast<int>(r.layers.size());
  for (auto& l : r.layers) l.v.pca.rank = rank;
  kvcal::packed_config pc;
  REQUIRE(kvcal::packed_config_of(r, &pc).empty());
  CHECK(pc.v_latent_rank == rank);
  CHECK(pc.compress_after == 512);
  // Tensors: basis [rank, d] (any rows: the maps do not need orthonormality), mean [d].
  std::vector<std::vector<float>> store;
  std::vector<kvcal::tensor_view> tv;
  auto add = [&](const std::string& name, std::vector<std::int64_t> shape, float seed) {
    std::size_t n = 1;
    for (auto x : shape) n *= static_cast<std::size_t>(x);
    std::vector<float> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = std::sin(seed + 0.37f * static_cast<float>(i));
    store.push_back(std::move(v));
  };
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> shapes;
  for (int l = 0; l < L; ++l)
    for (int h = 0; h < H; ++h) {
      const std::string p = "layers." + std::to_string(l) + ".v.heads." + std::to_string(h);
      shapes.push_back({p + ".pca.basis", {rank, d}});
      add(p + ".pca.basis", {rank, d}, static_cast<float>(10 * l + h));
      shapes.push_back({p + ".pca.mean", {d}});
      add(p + ".pca.mean", {d}, static_cast<float>(100 + 10 * l + h));
    }
  for (std::size_t i = 0; i < store.size(); ++i) {
    kvcal::tensor_view t;
    t.name = shapes[i].first;
    t.dtype = kvcal::st_dtype::F32;
    t.shape = shapes[i].second;
    t.data = reinterpret_cast<const std::uint8_t*>(store[i].data());
    t.nbytes = store[i].size() * sizeof(float);
    tv.push_back(t);
  }
  const kvcal::latent_map_set maps = kvcal::packed_latent_maps(r, tv, true, "p.safetensors");
  REQUIRE(static_cast<int>(maps.size()) == L);
  double worst = 0;
  for (int l = 0; l < L; ++l) {
    REQUIRE(static_cast<int>(maps[static_cast<std::size_t>(l)].size()) == H);
    for (int h = 0; h < H; ++h) {
      const kvcal::linear_maps& m = maps[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)];
      const std::vector<float>& B = store[static_cast<std::size_t>(2 * (l * H + h))];
      const std::vector<float>& mu = store[static_cast<std::size_t>(2 * (l * H + h) + 1)];
      REQUIRE(m.rank == rank);
      REQUIRE(m.d == d);
      for (int i = 0; i < rank; ++i) {
        double eb = 0;
        for (int c = 0; c < d; ++c) {
          const float b = B[static_cast<std::size_t>(i * d + c)];
          worst =
              std::max(worst, std::abs(double(m.enc_w[static_cast<std::size_t>(i * d + c)]) - b));
          worst = std::max(worst,
                           std::abs(double(m.dec_w[static_cast<std::size_t>(c * rank + i)]) - b));
          eb -= double(b) * mu[static_cast<std::size_t>(c)];
        }
        worst = std::max(worst, std::abs(m.enc_b[static_cast<std::size_t>(i)] - eb) / 8);
      }
      for (int c = 0; c < d; ++c)
        worst = std::max(worst, std::abs(double(m.dec_b[static_cast<std::size_t>(c)]) -
                                         mu[static_cast<std::size_t>(c)]));
    }
  }
  CHECK(worst <= 1e-5);
  // A missing tensor names the file and the tensor; a layer whose V is not a latent is named.
  auto short_tv = tv;
  short_tv.pop_back();
  auto msg = [](auto&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const std::string e1 =
      msg([&] { kvcal::packed_latent_maps(r, short_tv, true, "p.safetensors"); });
  CHECK_MESSAGE(e1.find("p.safetensors") != std::string::npos, e1);
  CHECK_MESSAGE(e1.find("heads.1.pca.mean") != std::string::npos, e1);
  const std::string e2 = msg([&] { kvcal::packed_latent_maps(r, tv, false, "p.safetensors"); });
  CHECK_MESSAGE(e2.find("layers[0] K head 0 is not a PCA") != std::string::npos, e2);
  // K latents at the reference model's head_dim 64: refused naming it (the kernel needs 128).
  const auto ae16 = kvcal::expand_recipe(kvcal::preset_template("ae-16"), ref_config(), "ae-16",
                                         kvcal::recipe_parse_options{true});
  CHECK(kvcal::packed_config_of(ae16, &pc).find("K latent mode at head_dim 64") !=
        std::string::npos);
}

TEST_CASE("packed_config_of: K+V latents (ae-16, K and V PCA) map to the K latent mode at d 128") {
  kvcal::model_config cfg = ref_config();  // Qwen2.5-7B attention shapes: head_dim 128
  cfg.num_attention_heads = 28;
  cfg.num_key_value_heads = 4;
  cfg.head_dim = 128;
  cfg.hidden_size = 28 * 128;
  auto recipe = [&](const std::string& name) {
    return kvcal::expand_recipe(kvcal::preset_template(name), cfg, name,
                                kvcal::recipe_parse_options{true});
  };
  kvcal::packed_config pc;
  const auto ae16 = recipe("ae-16");
  REQUIRE(kvcal::packed_config_of(ae16, &pc).empty());
  CHECK(pc.k_latent());
  CHECK(pc.k_latent_kind == kvcal::kv_method_kind::ae);
  CHECK(pc.k_latent_rank == 16);
  CHECK(pc.k_latent_bits == 16);
  CHECK(pc.v_latent_kind == kvcal::kv_method_kind::ae);
  CHECK(pc.v_latent_rank == 16);
  CHECK(pc.v_latent_bits == 16);
  CHECK(pc.bits == 16);
  CHECK(pc.compress_after == -1);
  // K and V PCA, rank 64, K 8-bit and V 4-bit latents (each stream its own width), adaptive.
  auto kv = recipe("knlp-v-pca-int8");
  for (auto& l : kv.layers) {
    l.k = kvcal::kv_method{};
    l.k.kind = kvcal::kv_method_kind::pca;
    l.k.pca.rank = 64;
    l.k.pca.latent_bits = 8;
    l.v.pca.rank = 64;
    l.v.pca.latent_bits = 4;
  }
  REQUIRE(kvcal::packed_config_of(kv, &pc).empty());
  CHECK(pc.k_latent_kind == kvcal::kv_method_kind::pca);
  CHECK(pc.k_latent_rank == 64);
  CHECK(pc.k_latent_bits == 8);
  CHECK(pc.v_latent_rank == 64);
  CHECK(pc.v_latent_bits == 4);
  CHECK(pc.compress_after == 512);
  CHECK(pc.residual == 256);
  // A template's rank 0 (from the PCA file at export) passes for both streams.
  auto r0 = kv;
  for (auto& l : r0.layers) l.k.pca.rank = l.v.pca.rank = 0;
  CHECK(kvcal::packed_config_of(r0, &pc).empty());
  // Refusals, each named: an MLP K, K and V ranks that differ, a rank the kernels do not take,
  // 2-bit K latents, a K latent without a V latent, head_dim 64, eviction, layers that differ.
  auto why = [](const kvcal::preset_recipe& x) {
    kvcal::packed_config c;
    return kvcal::packed_config_of(x, &c);
  };
  auto mlp = ae16;
  for (auto& l : mlp.layers) l.k.ae.hidden = 64;
  CHECK(why(mlp).find("K MLP autoencoder (hidden 64)") != std::string::npos);
  auto r32 = ae16;
  for (auto& l : r32.layers) l.k.ae.latent = 32;
  CHECK(why(r32).find("K latent rank 32 with V latent rank 16: the kernels take one rank") !=
        std::string::npos);
  auto r48 = kv;
  for (auto& l : r48.layers) l.k.pca.rank = l.v.pca.rank = 48;
  CHECK(why(r48).find("latent rank 48") != std::string::npos);
  auto b2 = ae16;
  for (auto& l : b2.layers) l.k.ae.latent_bits = 2;
  CHECK(why(b2).find("K latent 2-bit") != std::string::npos);
  auto kq = recipe("kivi-4");  // K PCA with KIVI V
  for (auto& l : kq.layers) {
    l.k = kvcal::kv_method{};
    l.k.kind = kvcal::kv_method_kind::pca;
    l.k.pca.rank = 16;
  }
  CHECK(why(kq).find("K latent without a V latent") != std::string::npos);
  auto d64 = ae16;
  d64.model.head_dim = 64;
  CHECK(why(d64).find("K latent mode at head_dim 64") != std::string::npos);
  auto ev = ae16;
  for (auto& l : ev.layers) {
    l.policy.kind = kvcal::token_policy_kind::h2o;
    l.budget.kind = kvcal::budget_kind::retain;
    l.budget.retain = 0.5;
  }
  CHECK(why(ev).find("eviction with a V latent") != std::string::npos);
  auto mixed = ae16;
  mixed.layers[1].k.ae.latent_bits = 8;
  CHECK(why(mixed).find("layers differ") != std::string::npos);
}

TEST_CASE("K latent presets map to the K latent mode in the bench (ae-16)") {
  // Qwen2.5-7B attention shapes (head_dim 128: the register-direct kernel's), as kvcal bench.
  kvcal::model_config cfg = ref_config();
  cfg.num_attention_heads = 28;
  cfg.num_key_value_heads = 4;
  cfg.head_dim = 128;
  cfg.hidden_size = 28 * 128;
  auto recipe = [&](const std::string& name) {
    return kvcal::expand_recipe(kvcal::preset_template(name), cfg, name,
                                kvcal::recipe_parse_options{true});
  };
  const auto r = recipe("ae-16");
  const auto c = kvcal::decode_case_of(r, "ae-16");
  CHECK_MESSAGE(c.unsupported.empty(), c.unsupported);
  CHECK(c.k_latent);
  CHECK(c.k_latent_ae);
  CHECK(c.k_latent_rank == 16);
  CHECK(c.k_latent_bits == 16);
  CHECK(c.v_latent);
  CHECK(c.v_latent_ae);
  CHECK(c.v_latent_rank == 16);
  CHECK(c.v_latent_bits == 16);
  CHECK(c.bits == 16);
  CHECK(!kvcal::decode_case_of(recipe("kivi-4"), "kivi-4").k_latent);
  // Refused with the reason: an MLP K, K and V ranks that differ, 2-bit K latents, K latents
  // without V latents, layers with different K methods; head_dim 64.
  auto why = [](const kvcal::preset_recipe& x) {
    return kvcal::decode_case_of(x, "x").unsupported;
  };
  auto mlp = r;
  for (auto& l : mlp.layers) l.k.ae.hidden = 64;
  CHECK(why(mlp).find("K MLP autoencoder") != std::string::npos);
  auto r32 = r;
  for (auto& l : r32.layers) l.k.ae.latent = 32;
  CHECK(why(r32).find("one rank for both") != std::string::npos);
  auto b2 = r;
  for (auto& l : b2.layers) l.k.ae.latent_bits = 2;
  CHECK(why(b2).find("K latent 2-bit") != std::string::npos);
  auto kpca = recipe("kivi-4");
  for (auto& l : kpca.layers) {
    l.k = kvcal::kv_method{};
    l.k.kind = kvcal::kv_method_kind::pca;
    l.k.pca.rank = 16;
  }
  CHECK(why(kpca).find("without a V latent") != std::string::npos);
  auto mixed = r;
  mixed.layers[1].k.ae.latent = 32;
  CHECK(why(mixed).find("layers differ") != std::string::npos);
  CHECK(case_of("ae-16").unsupported.find("head_dim 64") != std::string::npos);
}

TEST_CASE("what the kernels cannot run is refused with the reason") {
  CHECK(case_of("ae-16").unsupported.find("K latent mode at head_dim 64") != std::string::npos);
  // h2o runs on the GPU (fp16 + eviction) but is timed end to end, not as a kernel case.
  CHECK(case_of("h2o").unsupported.find("bench_model --kv-cache h2o") != std::string::npos);
  CHECK(case_of("streaming-llm").unsupported.find("window eviction: timed end to end") !=
        std::string::npos);
  for (const char* m : {"mlsys-conservative", "mlsys-aggressive", "mlsys-extreme"})
    CHECK_MESSAGE(!case_of(m).unsupported.empty(), m);

  // Hand-made recipes: K per-token, K/V at different widths.
  auto r = kvcal::expand_recipe(kvcal::preset_template("kivi-4"), ref_config(), "kivi-4");
  for (auto& l : r.layers) l.k.quant.axis = kvcal::quant_axis::per_token;
  CHECK(kvcal::decode_case_of(r, "x").unsupported.find("K quantized per-token") !=
        std::string::npos);
  r = kvcal::expand_recipe(kvcal::preset_template("kivi-4"), ref_config(), "kivi-4");
  for (auto& l : r.layers) l.v.quant.bits = 8;  // V wider than K
  CHECK(kvcal::decode_case_of(r, "x").unsupported.find("wider than K") != std::string::npos);
  for (auto& l : r.layers) l.v.quant.bits = 2;  // K4V2: the register-direct kernel (d 128)
  const auto k4v2 = kvcal::decode_case_of(r, "x");
  CHECK(k4v2.unsupported.empty() == (r.model.head_dim == 128));
  if (k4v2.unsupported.empty()) CHECK((k4v2.bits == 4 && k4v2.v_bits == 2));
  r.layers[1].k.quant.bits = 2;
  CHECK(kvcal::decode_case_of(r, "x").unsupported.find("layers differ") != std::string::npos);
}

static kvcal::preset_recipe recipe_of(const std::string& name) {
  return kvcal::expand_recipe(kvcal::preset_template(name), ref_config(), name,
                              kvcal::recipe_parse_options{true});
}

TEST_CASE("packed_config_of: the h2o template is fp16 + H2O eviction; other policies refused") {
  kvcal::packed_config c;
  CHECK(kvcal::packed_config_of(recipe_of("h2o"), &c).empty());
  CHECK(c.h2o);
  CHECK(c.bits == 16);
  CHECK(c.heavy == doctest::Approx(0.8));
  CHECK(c.retain == doctest::Approx(0.125));
  CHECK(c.tokens == 0);
  CHECK(c.residual == 0);  // no fp16 window widens the recent share
  kvcal::packed_config f;
  CHECK(kvcal::packed_config_of(recipe_of("fp16"), &f).empty());
  CHECK(!f.h2o);

  auto r = recipe_of("h2o");  // a token budget instead of retain
  for (auto& l : r.layers) {
    l.budget.kind = kvcal::budget_kind::tokens;
    l.budget.tokens = 40;
  }
  CHECK(kvcal::packed_config_of(r, &c).empty());
  CHECK(c.tokens == 40);
  CHECK(c.retain == 0.0);
  r.layers[1].budget.tokens = 41;  // layers differ
  CHECK(kvcal::packed_config_of(r, &c).find("token policy or budget") != std::string::npos);
  r = recipe_of("h2o");  // H2O over quantized K / V
  const auto kivi = recipe_of("kivi-4");
  for (std::size_t i = 0; i < r.layers.size(); ++i) {
    r.layers[i].k = kivi.layers[i].k;
    r.layers[i].v = kivi.layers[i].v;
  }
  CHECK(kvcal::packed_config_of(r, &c).find("fp16 caches only") != std::string::npos);
  r = recipe_of("h2o");
  r.layers[0].guard = 0.5;
  CHECK(kvcal::packed_config_of(r, &c).find("guard") != std::string::npos);
  r = recipe_of("h2o");
  for (auto& l : r.layers) l.budget.kind = kvcal::budget_kind::none;
  CHECK(kvcal::packed_config_of(r, &c).find("without a budget") != std::string::npos);
  r = recipe_of("h2o");  // the CPU's adaptive mode delays eviction: not in the GPU rule
  r.adaptive.enabled = true;
  r.adaptive.compress_after = 512;
  r.adaptive.keep_recent = 256;
  CHECK(kvcal::packed_config_of(r, &c).find("h2o eviction with the adaptive mode") !=
        std::string::npos);
  r = recipe_of("h2o");  // policies without a GPU rule are named
  for (auto& l : r.layers) l.policy.kind = kvcal::token_policy_kind::lru;
  CHECK(kvcal::packed_config_of(r, &c).find("eviction (lru): no CUDA kernel yet") !=
        std::string::npos);
  kvcal::packed_config w;  // StreamingLLM: fp16, 4 sinks + 1020 recent
  CHECK(kvcal::packed_config_of(recipe_of("streaming-llm"), &w).empty());
  CHECK(w.window);
  CHECK(!w.h2o);
  CHECK(w.bits == 16);
  CHECK(w.sinks == 4);
  CHECK(w.recent == 1020);
}

TEST_CASE("packed_config_of: learned eviction with a budget maps to the GPU; threshold refused") {
  kvcal::packed_config c;
  const auto t = recipe_of("learned-eviction");
  REQUIRE(t.layers[0].policy.kind == kvcal::token_policy_kind::learned);
  CHECK(kvcal::packed_config_of(t, &c).empty());
  CHECK(c.learned);
  CHECK(!c.h2o);
  CHECK(!c.window);
  CHECK(c.bits == 16);
  CHECK(c.heavy == 1.0);  // nothing but the fp16 window is protected (learned_policy::recent)
  CHECK(c.retain == doctest::Approx(0.125));
  CHECK(c.tokens == 0);
  CHECK(c.residual == 0);
  CHECK(kvcal::decode_case_of(t, "learned-eviction").unsupported.find("--kv-cache") !=
        std::string::npos);  // timed end to end, not as a kernel case

  auto r = t;  // a token budget and an fp16 window
  for (auto& l : r.layers) {
    l.budget.kind = kvcal::budget_kind::tokens;
    l.budget.tokens = 40;
    l.residual = 16;
  }
  CHECK(kvcal::packed_config_of(r, &c).empty());
  CHECK(c.learned);
  CHECK(c.tokens == 40);
  CHECK(c.retain == 0.0);
  CHECK(c.residual == 16);

  auto why = [](kvcal::preset_recipe x) {
    kvcal::packed_config o;
    return kvcal::packed_config_of(x, &o);
  };
  r = t;  // a threshold: the rows held are not bounded by a budget
  for (auto& l : r.layers) l.policy.learned.threshold = 0.5;
  CHECK(why(r).find("learned eviction with a threshold") != std::string::npos);
  for (auto& l : r.layers) l.budget.kind = kvcal::budget_kind::none;  // threshold only
  CHECK(why(r).find("learned eviction with a threshold") != std::string::npos);
  r = t;
  for (auto& l : r.layers) l.budget.kind = kvcal::budget_kind::none;
  CHECK(why(r).find("learned eviction without a budget") != std::string::npos);
  r = t;  // one layer with another scorer shape
  r.layers[2].policy.learned.mlp_hidden = 64;
  CHECK(why(r).find("token policy or budget") != std::string::npos);
  r = t;
  r.layers[0].policy.learned.features = kvcal::policy_features::key;
  CHECK(why(r).find("token policy or budget") != std::string::npos);
  r = t;  // quantized K / V
  const auto kivi = recipe_of("kivi-4");
  for (std::size_t i = 0; i < r.layers.size(); ++i) {
    r.layers[i].k = kivi.layers[i].k;
    r.layers[i].v = kivi.layers[i].v;
  }
  CHECK(why(r).find("learned eviction with quantized K / V") != std::string::npos);
  r = t;  // the adaptive mode (eviction waits on the CPU)
  r.adaptive.enabled = true;
  r.adaptive.compress_after = 64;
  r.adaptive.keep_recent = 32;
  CHECK(why(r).find("learned eviction with the adaptive mode") != std::string::npos);
  r = t;
  r.layers[1].head_budgets.assign(static_cast<std::size_t>(ref_config().num_key_value_heads),
                                  r.layers[1].budget);
  CHECK(!why(r).empty());
  r = t;
  r.layers[0].guard = 0.25;
  CHECK(why(r).find("guard") != std::string::npos);
}

#if KVCAL_WITH_CUDA
namespace {

// The GPU rule (heavy share, fp16 window `residual`, a budget of 37 tokens or the recipe's retain
// fraction) against the CPU policy `pol` of layer `lr` for seen 1 .. 3000: retained R, the recent
// share and (with `no_sinks`) zero sinks, for held R, R + 1 and seen.
void check_scored_rule(const kvcal::eviction_policy& pol, const kvcal::layer_recipe& lr,
                       double heavy, int residual, bool tokens_37, bool no_sinks) {
  kvcal::evict_budget b;
  b.heavy = heavy;
  b.window = residual;
  if (tokens_37)
    b.tokens = 37;
  else
    b.retain = lr.budget.retain;
  for (std::int64_t seen = 1; seen <= 3000; ++seen) {
    const std::int64_t R = pol.retained(seen, 0);
    REQUIRE(kvcal::evict_retained(b, seen) == R);
    for (std::int64_t held : {R, R + 1, seen}) {
      REQUIRE(kvcal::evict_recent(b, R, held) == std::min(pol.recent(R), held));
      if (no_sinks) REQUIRE(kvcal::evict_sinks(b, R, held) == 0);
    }
  }
}

}  // namespace

TEST_CASE("GPU eviction rule (kernels/cuda/evict.h) = the CPU policy's budget and recent share") {
  // The reference: runtime/eviction (h2o_policy::retained / recent, select_kept's min with n).
  const auto cfg = ref_config();
  for (double heavy : {0.8, 0.5, 0.0, 1.0, 0.33})
    for (int residual : {0, 1, 16})
      for (int mode = 0; mode < 3; ++mode) {
        auto r = recipe_of("h2o");
        kvcal::layer_recipe lr = r.layers[0];
        lr.policy.heavy = heavy;
        lr.residual = residual;
        if (mode == 1) lr.budget.retain = 0.3;
        if (mode == 2) {
          lr.budget.kind = kvcal::budget_kind::tokens;
          lr.budget.tokens = 37;
        }
        const auto pol =
            kvcal::make_policy(lr, 0, residual, {}, cfg.num_key_value_heads, cfg.head_dim, "test");
        check_scored_rule(*pol, lr, heavy, residual, mode == 2, true);
      }
  // Learned (the GPU cache runs it as heavy 1: only the fp16 window is recent).
  for (int residual : {0, 1, 16})
    for (int mode = 0; mode < 2; ++mode) {
      kvcal::layer_recipe lr = recipe_of("learned-eviction").layers[0];
      lr.residual = residual;
      if (mode == 1) {
        lr.budget.kind = kvcal::budget_kind::tokens;
        lr.budget.tokens = 37;
      }
      const std::int64_t H = cfg.num_key_value_heads, I = lr.policy.learned.in_dim;
      std::vector<float> w(static_cast<std::size_t>(H * I)), bias(static_cast<std::size_t>(H));
      std::vector<kvcal::tensor_view> tv(2);
      tv[0].name = "layers.0.policy.weight";
      tv[0].shape = {H, I};
      tv[0].data = reinterpret_cast<const std::uint8_t*>(w.data());
      tv[0].nbytes = w.size() * sizeof(float);
      tv[1].name = "layers.0.policy.bias";
      tv[1].shape = {H};
      tv[1].data = reinterpret_cast<const std::uint8_t*>(bias.data());
      tv[1].nbytes = bias.size() * sizeof(float);
      const auto pol =
          kvcal::make_policy(lr, 0, residual, tv, cfg.num_key_value_heads, cfg.head_dim, "test");
      check_scored_rule(*pol, lr, 1.0, residual, mode == 1, false);
    }
  // Window policy (sinks + recent): select_kept's sinks = min(sinks, R, n), recent =
  // min(recent(R), n - sinks).
  for (int sinks : {0, 1, 4, 50})
    for (int recent : {1, 7, 100}) {
      kvcal::layer_recipe lr = recipe_of("streaming-llm").layers[0];
      lr.policy.sinks = sinks;
      lr.policy.recent = recent;
      const auto pol =
          kvcal::make_policy(lr, 0, 0, {}, cfg.num_key_value_heads, cfg.head_dim, "test");
      kvcal::evict_budget b;
      b.window_policy = true;
      b.sinks = sinks;
      b.tokens = sinks + recent;
      for (std::int64_t seen = 1; seen <= 400; ++seen) {
        const std::int64_t R = pol->retained(seen, 0);
        REQUIRE(kvcal::evict_retained(b, seen) == R);
        for (std::int64_t held : {R, R + 1, seen}) {
          const std::int64_t s = std::min({pol->sinks(), R, held});
          REQUIRE(kvcal::evict_sinks(b, R, held) == s);
          REQUIRE(kvcal::evict_recent(b, R, held) == std::min(pol->recent(R), held - s));
        }
      }
    }
}
#endif

TEST_CASE("table rows: bandwidth and ratios") {
  kvcal::decode_shape s;
  s.batch = 8;
  s.len = 32768;
  kvcal::decode_timing t;
  t.us = 100;
  t.bytes = 2e8;
  t.fp16_bytes = 6e8;
  const std::string row = kvcal::decode_table_row("kivi-4", s, t, 200, 150);
  // 2e8 B / 100 us = 2.00 TB/s; fp16 / read = 3.00; 200/100 = 2.00 vs ours; 150/100 = 1.50 vs SDPA
  CHECK(row == "| kivi-4 | 8 | 32768 | 100.0 | 200.0 | 2.00 | 3.00 | 2.00 | 1.50 | - |\n");
}

TEST_CASE("kvcal bench: usage errors, and one clear error where there is no GPU") {
  std::ostringstream out, err;
  CHECK(kvcal::cli::run({"bench", "--preset", "nonexist"}, out, err) == 2);
  CHECK(err.str().find("no such file, and not a template") != std::string::npos);
  CHECK(err.str().find("kivi-3 (bench only), k3v2 (bench only)") != std::string::npos);
  CHECK(kvcal::cli::run({"bench", "--batch", "0"}, out, err) == 2);
  CHECK(kvcal::cli::run({"bench", "--len", "x"}, out, err) == 2);
  std::ostringstream e3;
  CHECK(kvcal::cli::run({"bench", "--register-direct", "yes"}, out, e3) == 2);
  CHECK(e3.str().find("--register-direct must be on or off") != std::string::npos);
  if (kvcal::cuda_device_count() == 0) {
    std::ostringstream o2, e2;
    CHECK(kvcal::cli::run({"bench", "--batch", "1", "--len", "64", "--reps", "1"}, o2, e2) == 1);
    CHECK(o2.str().empty());  // no half-printed table
    CHECK(e2.str().find("CUDA") != std::string::npos);
    // The bench-only cases resolve as presets (no usage error): the failure is the missing GPU.
    std::ostringstream o3, e4;
    CHECK(kvcal::cli::run(
              {"bench", "--preset", "kivi-3", "k3v2", "--batch", "1", "--len", "64", "--reps", "1"},
              o3, e4) == 1);
    CHECK(e4.str().find("CUDA") != std::string::npos);
  }
}

TEST_CASE(
    "the development table has register-direct rows for kivi-4 / 3 / 2, K3V2, fp16, V and K "
    "latents") {
  int rd = 0, rd_latent = 0, rd_fp16 = 0, rd_k_latent = 0, rd_3bit = 0;
  for (const auto& c : kvcal::builtin_decode_cases()) {
    // Every register-direct row names itself, and the other rows do not.
    CHECK(c.register_direct == (c.name.find("register-direct") != std::string::npos));
    if (c.register_direct) {
      ++rd;
      CHECK(c.unsupported.empty());
      CHECK((c.bits == 4 || c.bits == 3 || c.bits == 2 || c.bits == 16));
      if (c.bits == 3) {  // kivi-3 (V at K's width) and k3v2 (V 2-bit)
        ++rd_3bit;
        CHECK(c.v_bits == (c.name.find("k3v2") == 0 ? 2 : 0));
      }
      if (c.k_latent) {  // ae-16's layout, then PCA r32 int8
        ++rd_k_latent;
        CHECK(c.v_latent);
        CHECK(c.k_latent_rank == c.v_latent_rank);
        CHECK(c.k_latent_bits == c.v_latent_bits);
        CHECK(((c.k_latent_rank == 16 && c.k_latent_bits == 16) ||
               (c.k_latent_rank == 32 && c.k_latent_bits == 8)));
      } else if (c.v_latent) {
        ++rd_latent;
        CHECK(c.v_latent_rank == 32);
        CHECK(c.v_latent_bits == 8);
      } else if (c.bits == 16) {
        ++rd_fp16;
      }
    }
  }
  CHECK(rd == 9);
  CHECK(rd_3bit == 2);
  CHECK(rd_latent == 2);
  CHECK(rd_fp16 == 1);
  CHECK(rd_k_latent == 2);
}
