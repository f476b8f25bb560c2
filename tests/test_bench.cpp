// bench/decode_bench: which kernel configuration each shipped template runs as on the CUDA
// kernels, and clear refusals (not silent skips) for what the kernels cannot read yet; the table
// arithmetic; `kvcal bench` on a build or machine without CUDA fails with one clear message.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "bench/decode_bench.h"
#include "cli/app.h"
#include "kernels/common/cuda_device.h"
#include "presets/preset_template.h"
#include "runtime/model_config.h"
#include "runtime/packed_support.h"

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
  CHECK(kvcal::packed_config_of(kpca, &pc).find("K PCA") != std::string::npos);
  auto mixed = r;
  mixed.layers[1].v.ae.latent = 16;
  CHECK(kvcal::packed_config_of(mixed, &pc).find("layers differ") != std::string::npos);
}

TEST_CASE("what the kernels cannot run is refused with the reason") {
  CHECK(case_of("ae-16").unsupported.find("autoencoder") != std::string::npos);
  CHECK(case_of("h2o").unsupported.find("eviction (h2o)") != std::string::npos);
  CHECK(case_of("streaming-llm").unsupported.find("eviction") != std::string::npos);
  for (const char* m : {"mlsys-conservative", "mlsys-aggressive", "mlsys-extreme"})
    CHECK_MESSAGE(!case_of(m).unsupported.empty(), m);

  // Hand-made recipes: K per-token, K/V at different widths.
  auto r = kvcal::expand_recipe(kvcal::preset_template("kivi-4"), ref_config(), "kivi-4");
  for (auto& l : r.layers) l.k.quant.axis = kvcal::quant_axis::per_token;
  CHECK(kvcal::decode_case_of(r, "x").unsupported.find("K quantized per-token") !=
        std::string::npos);
  r = kvcal::expand_recipe(kvcal::preset_template("kivi-4"), ref_config(), "kivi-4");
  for (auto& l : r.layers) l.v.quant.bits = 2;
  CHECK(kvcal::decode_case_of(r, "x").unsupported.find("different bit widths") !=
        std::string::npos);
  r.layers[1].k.quant.bits = 2;
  CHECK(kvcal::decode_case_of(r, "x").unsupported.find("layers differ") != std::string::npos);
}

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
  CHECK(kvcal::cli::run({"bench", "--batch", "0"}, out, err) == 2);
  CHECK(kvcal::cli::run({"bench", "--len", "x"}, out, err) == 2);
  if (kvcal::cuda_device_count() == 0) {
    std::ostringstream o2, e2;
    CHECK(kvcal::cli::run({"bench", "--batch", "1", "--len", "64", "--reps", "1"}, o2, e2) == 1);
    CHECK(o2.str().empty());  // no half-printed table
    CHECK(e2.str().find("CUDA") != std::string::npos);
  }
}
