// presets: recipe schema and versioning, preset files round trip, template export against model
// configs, byte accounting against hand-computed cases, `kvcal export` / `kvcal inspect`.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/app.h"
#include "kernels/common/error.h"
#include "kernels/common/log.h"
#include "presets/preset_export.h"
#include "presets/preset_template.h"
#include "presets/preset_writer.h"
#include "runtime/byte_accounting.h"
#include "runtime/preset.h"
#include "runtime/preset_report.h"
#include "tests/test_util.h"

using json = nlohmann::json;
using kvcal::test::scratch_dir;

namespace {

// A model folder holding only config.json (all export needs).
std::string make_model(const scratch_dir& dir, const std::string& name, int layers, int heads,
                       int kv_heads, int head_dim, const std::string& type = "llama") {
  const std::string folder = dir.file(name);
  REQUIRE(std::system(("mkdir -p '" + folder + "'").c_str()) == 0);
  json c{{"model_type", type},
         {"vocab_size", 1000},
         {"hidden_size", heads * head_dim},
         {"intermediate_size", 4 * heads * head_dim},
         {"num_hidden_layers", layers},
         {"num_attention_heads", heads},
         {"num_key_value_heads", kv_heads},
         {"head_dim", head_dim},
         {"rms_norm_eps", 1e-6},
         {"max_position_embeddings", 32768},
         {"rope_theta", type == "qwen2" ? 1000000.0 : 10000.0},
         {"hidden_act", "silu"}};
  kvcal::test::write_bytes(folder + "/config.json", c.dump(2));
  return folder;
}

kvcal::model_config small_config(const scratch_dir& dir) {
  return kvcal::read_model_config(make_model(dir, "small", 4, 8, 2, 64) + "/config.json");
}

// Expands a one-line layer entry into a recipe for `cfg`.
kvcal::preset_recipe recipe_of(const json& layer, const kvcal::model_config& cfg,
                               const json& extra = json::object()) {
  json t = extra;
  t["name"] = "test";
  t["layer"] = layer;
  return kvcal::expand_recipe(t, cfg, "test recipe");
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const kvcal::error& e) {
    return e.what();
  }
  return "(no error)";
}

bool has(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

struct cli_result {
  int code;
  std::string out, err;
};
cli_result kvcal_run(const std::vector<std::string>& args) {
  std::ostringstream out, err;
  int code = kvcal::cli::run(args, out, err);
  kvcal::set_log_level(kvcal::log_level::info);
  return {code, out.str(), err.str()};
}

}  // namespace

TEST_CASE("recipe round trip: write -> read gives the identical recipe and tensors") {
  scratch_dir dir;
  const auto cfg = small_config(dir);
  json layer0{{"k", {{"quant", {{"bits", 3}, {"group", 32}, {"axis", "per-channel"}}}}},
              {"v", {{"pca", {{"rank", 8}, {"latent_bits", 8}}}}},
              {"heads", json::array({json{{"k", "none"}}, json::object()})},
              {"policy", {{"h2o", {{"heavy", 0.75}, {"recent", 0.25}}}}},
              {"budget", {{"tokens", 300}}},
              {"guard", 0.25},
              {"residual", 64}};
  json layer1{{"k", {{"ae", {{"latent", 16}, {"latent_bits", 4}}}}},
              {"v", "none"},
              {"policy", {{"learned", {{"features", "hidden"}, {"mlp_hidden", 16}}}}},
              {"budget", {{"retain", 0.25}}}};
  json layer2{
      {"k", "none"}, {"v", "none"}, {"policy", {{"window", {{"sinks", 4}, {"recent", 60}}}}}};
  json layer3{{"k", "none"},
              {"v", {{"ae", {{"latent", 8}, {"hidden", 12}}}}},  // MLP autoencoder (version 2)
              {"policy", {{"cluster", {{"k", 7}}}}},
              {"budget", {{"retain", 0.5}}}};
  json t{{"name", "mixed"},
         {"description", "every method"},
         {"adaptive", {{"compress_after", 100}, {"keep_recent", 32}}},
         {"layers", {layer0, layer1, layer2, layer3}}};
  const kvcal::preset_recipe r = kvcal::expand_recipe(t, cfg, "mixed");
  CHECK(r.layers[1].policy.learned.in_dim == 512);  // filled from hidden_size

  const auto req = kvcal::required_tensors(r);
  // layer 0: PCA for V of 2 heads (2 tensors each); layer 1: AE for K of 2 heads (4 each) and an
  // MLP policy (4 tensors); layer 3: MLP AE for V of 2 heads (4 + 6 each).
  REQUIRE(req.size() == 2 * 2 + 2 * 4 + 4 + 2 * 10);
  CHECK(r.layers[3].v.ae.hidden == 12);
  CHECK(r.layers[1].k.ae.hidden == 0);
  std::vector<std::vector<float>> data;
  std::vector<kvcal::tensor_out> tensors;
  float x = 0.5f;
  for (const auto& q : req) {
    std::int64_t n = 1;
    for (auto d : q.shape) n *= d;
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& e : v) e = (x = x * 1.37f - std::floor(x * 1.37f)) - 0.5f;
    data.push_back(std::move(v));
    tensors.push_back({q.name, kvcal::st_dtype::F32, q.shape, data.back().data()});
  }
  const std::string path = dir.file("mixed.safetensors");
  kvcal::write_preset(path, r, tensors, 4096);
  CHECK(kvcal::is_preset_file(path));

  kvcal::preset_file p(path);
  CHECK(p.recipe() == r);
  CHECK(kvcal::recipe_to_json(p.recipe()) == kvcal::recipe_to_json(r));
  CHECK(p.recipe().layers[0].heads.size() == 2);
  CHECK(p.recipe().layers[0].k_of(0).kind == kvcal::kv_method_kind::none);
  CHECK(p.recipe().layers[0].k_of(1).kind == kvcal::kv_method_kind::quant);
  REQUIRE(p.tensors().tensors().size() == tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = p.tensors().at(tensors[i].name);
    CHECK(t.shape == tensors[i].shape);
    REQUIRE(t.nbytes == data[i].size() * sizeof(float));
    CHECK(std::memcmp(t.data, data[i].data(), t.nbytes) == 0);
  }
  CHECK(p.fixed_bytes() > 0);
  p.check_model(cfg, "small/config.json");
  const json acc = json::parse(p.tensors().metadata().at(kvcal::preset_accounting_key));
  CHECK(acc.at("context") == 4096);
  CHECK(acc.at("fixed_bytes").get<double>() ==
        doctest::Approx(static_cast<double>(p.fixed_bytes())));
  CHECK(kvcal::describe_method(p.recipe().layers[3].v) == "ae 8 fp16 mlp12");
  CHECK(kvcal::describe_method(p.recipe().layers[1].k) == "ae 16 int4");

  // A version 1 file (written before MLP autoencoders) is read, and inspect names its version.
  json v1 = kvcal::recipe_to_json(r);
  v1["version"] = 1;
  for (auto& l : v1["layers"])
    for (const char* kv : {"k", "v"})
      if (l[kv].is_object() && l[kv].contains("ae")) l[kv]["ae"].erase("hidden");
  v1["layers"][3]["v"] = "none";
  std::vector<kvcal::tensor_out> t1;
  for (const auto& t : tensors)
    if (t.name.rfind("layers.3.", 0) != 0) t1.push_back(t);
  const std::string old = dir.file("v1.safetensors");
  kvcal::write_safetensors(old, t1, {{kvcal::preset_metadata_key, v1.dump()}});
  kvcal::preset_file p1(old);
  CHECK(p1.recipe().layers[1].k.ae.hidden == 0);
  std::ostringstream os;
  kvcal::describe_preset(old, os);
  CHECK_MESSAGE(has(os.str(), "kvcal preset, format kvcal.preset version 1"), os.str());
}

TEST_CASE("every template that needs no calibration exports against llama and Qwen2.5-7B shapes") {
  scratch_dir dir;
  const std::string small = make_model(dir, "small", 4, 8, 2, 64);
  const std::string qwen = make_model(dir, "qwen", 28, 28, 4, 128, "qwen2");
  int exported = 0, refused = 0;
  for (const auto& name : kvcal::preset_template_names()) {
    for (const auto& model : {small, qwen}) {
      kvcal::export_params p;
      p.template_name = name;
      p.model_dir = model;
      p.out = dir.file(name + "-" + std::to_string(exported + refused) + ".safetensors");
      const auto cfg = kvcal::read_model_config(model + "/config.json");
      const auto needs = kvcal::needs_of(kvcal::expand_recipe(
          kvcal::preset_template(name), cfg, name, kvcal::recipe_parse_options{true}));
      if (needs.any()) {
        const std::string e = error_of([&] { kvcal::export_preset(p); });
        CHECK_MESSAGE(has(e, "needs calibrated tensors"), e);
        CHECK_MESSAGE(!kvcal::test::file_exists(p.out), name);
        ++refused;
        continue;
      }
      kvcal::export_preset(p);
      kvcal::preset_file f(p.out);
      CHECK(f.recipe().name == name);
      CHECK(static_cast<std::int64_t>(f.recipe().layers.size()) == cfg.num_hidden_layers);
      f.check_model(cfg, model);
      const auto a = kvcal::account_bytes(f.recipe(), 32768);
      CHECK_MESSAGE(a.ratio() >= 1.0, name);
      ++exported;
    }
  }
  CHECK(exported == 2 * 8);  // fp16 kivi-2 kivi-4 h2o streaming-llm mlsys x3
  CHECK(refused == 2 * 4);   // knlp-v-pca-int8 hybrid-k2-vpca8 learned-eviction ae-16
}

TEST_CASE("templates needing calibration say which; calibration files are refused for now") {
  scratch_dir dir;
  const std::string model = make_model(dir, "small", 4, 8, 2, 64);
  kvcal::export_params p;
  p.model_dir = model;
  p.out = dir.file("x.safetensors");
  p.template_name = "knlp-v-pca-int8";
  std::string e = error_of([&] { kvcal::export_preset(p); });
  CHECK_MESSAGE(has(e, "template 'knlp-v-pca-int8' needs calibrated tensors: PCA bases"), e);
  p.template_name = "ae-16";
  CHECK(has(error_of([&] { kvcal::export_preset(p); }), "autoencoder weights"));
  p.template_name = "learned-eviction";
  CHECK(has(error_of([&] { kvcal::export_preset(p); }), "eviction policy weights"));
  p.pca = dir.file("pca.h5");
  e = error_of([&] { kvcal::export_preset(p); });
  CHECK_MESSAGE(has(e, "pca.h5: no such file"), e);  // --pca is read (tests/test_pca.cpp)
  p.pca.clear();
  p.template_name = "no-such";
  e = error_of([&] { kvcal::export_preset(p); });
  CHECK_MESSAGE((has(e, "unknown template 'no-such'") && has(e, "kivi-2")), e);
}

TEST_CASE("pyramid budgets decay linearly through the middle layer") {
  auto r = kvcal::pyramid_retain(0.35, 0.12, 0.05, 28);
  CHECK(r[0] == doctest::Approx(0.35));
  CHECK(r[7] == doctest::Approx(0.235));
  CHECK(r[14] == doctest::Approx(0.12));
  CHECK(r[27] == doctest::Approx(0.05));
  r = kvcal::pyramid_retain(0.45, 0.18, -1, 4);  // conservative: no last-layer value
  CHECK(r == std::vector<double>{0.45, 0.315, 0.18, 0.18});
  r = kvcal::pyramid_retain(0.5, -1, 0.2, 4);
  CHECK(r[1] == doctest::Approx(0.4));
  scratch_dir dir;
  auto rec = kvcal::expand_recipe(kvcal::preset_template("mlsys-aggressive"), small_config(dir),
                                  "mlsys-aggressive");
  CHECK(rec.layers[0].budget.retain == doctest::Approx(0.35));
  CHECK(rec.layers[2].budget.retain == doctest::Approx(0.12));
  CHECK(rec.layers[3].budget.retain == doctest::Approx(0.05));
}

TEST_CASE("schema errors: one clear message naming the field") {
  scratch_dir dir;
  const auto cfg = small_config(dir);
  const json good =
      kvcal::recipe_to_json(recipe_of({{"k", "none"}, {"v", "none"}, {"policy", "full"}}, cfg));
  auto err = [&](const std::function<void(json&)>& edit) {
    json j = good;
    edit(j);
    return error_of([&] { kvcal::parse_recipe(j, "preset.safetensors"); });
  };
  CHECK(err([](json&) {}) == "(no error)");
  std::string e = err([](json& j) { j["layers"][3]["k"] = {{"quant", {{"bits", 5}}}}; });
  CHECK_MESSAGE(e == "preset.safetensors: layers[3].k.quant.bits: 5 is not one of 2,3,4,8", e);
  e = err([](json& j) { j.erase("layers"); });
  CHECK_MESSAGE(e == "preset.safetensors: layers: missing", e);
  e = err([](json& j) { j["layers"][1].erase("v"); });
  CHECK_MESSAGE(e == "preset.safetensors: layers[1].v: missing", e);
  e = err([](json& j) { j["layers"][0]["v"] = {{"quant", json::object()}}; });
  CHECK_MESSAGE(e == "preset.safetensors: layers[0].v.quant.bits: missing", e);
  e = err([](json& j) { j["model"].erase("head_dim"); });
  CHECK_MESSAGE(e == "preset.safetensors: model.head_dim: missing", e);
  e = err([](json& j) { j["layers"][2]["k"] = {{"svd", {{"rank", 4}}}}; });
  CHECK_MESSAGE(e == "preset.safetensors: layers[2].k: unknown method 'svd' (none, quant, pca, ae)",
                e);
  e = err([](json& j) { j["layers"][2]["policy"] = "random"; });
  CHECK_MESSAGE(has(e, "layers[2].policy: unknown token policy 'random'"), e);
  e = err([](json& j) { j["layers"][0]["policy"] = "lru"; });
  CHECK_MESSAGE(has(e, "layers[0].budget: missing (policy 'lru'"), e);
  e = err([](json& j) { j["layers"][0]["gaurd"] = 0.5; });
  CHECK_MESSAGE(e == "preset.safetensors: layers[0].gaurd: unknown field", e);
  e = err([](json& j) { j["layers"][0]["v"] = {{"quant", {{"bits", 2}, {"group", 48}}}}; });
  CHECK_MESSAGE(has(e, "layers[0].v.quant.group: 48 does not divide head_dim 64"), e);
  e = err([](json& j) { j["layers"][0]["v"] = {{"pca", {{"rank", 0}}}}; });
  CHECK_MESSAGE(has(e, "layers[0].v.pca.rank: 0 is outside [1, 64]"), e);
  e = err([](json& j) { j["layers"][0]["policy"] = {{"h2o", {{"heavy", 0.8}, {"recent", 0.3}}}}; });
  CHECK_MESSAGE(has(e, "layers[0].policy.h2o: heavy + recent is 1.1"), e);
  e = err([](json& j) { j["layers"].erase(0); });
  CHECK_MESSAGE(e == "preset.safetensors: layers: 3 entries, but model.n_layers is 4", e);
  e = err([](json& j) { j["format"] = "gguf"; });
  CHECK_MESSAGE(has(e, "format: 'gguf' is not 'kvcal.preset'"), e);

  // Version: both numbers, and which way.
  CHECK(good.at("version") == 2);
  e = err([](json& j) { j["version"] = 3; });
  CHECK_MESSAGE(e == "preset.safetensors: version: the file is format version 3, newer than this "
                     "build reads (2); update kvcal",
                e);
  e = err([](json& j) { j["version"] = 0; });
  CHECK_MESSAGE(has(e, "format version 0, older than the oldest this build reads (1)"), e);
  // Version 1 (before MLP autoencoders) is still read; ae.hidden needs version 2.
  e = err([](json& j) {
    j["version"] = 1;
    j["layers"][2]["v"] = {{"ae", {{"latent", 8}, {"latent_bits", 16}}}};
  });
  CHECK_MESSAGE(e == "(no error)", e);
  e = err([](json& j) {
    j["version"] = 1;
    j["layers"][2]["v"] = {{"ae", {{"latent", 8}, {"hidden", 16}}}};
  });
  CHECK_MESSAGE(e == "preset.safetensors: layers[2].v.ae.hidden: MLP autoencoders need format "
                     "version 2, the file is version 1",
                e);
  e = err([](json& j) { j["layers"][2]["v"] = {{"ae", {{"latent", 8}, {"hidden", -1}}}}; });
  CHECK_MESSAGE(has(e, "layers[2].v.ae.hidden: -1 is outside [0, 1048576]"), e);
  e = err([](json& j) { j["layers"][2]["v"] = {{"pca", {{"rank", 8}, {"hidden", 16}}}}; });
  CHECK_MESSAGE(has(e, "layers[2].v.pca.hidden: unknown field"), e);

  // Template / recipe-file level.
  e = error_of([&] { kvcal::expand_recipe(json{{"name", "x"}}, cfg, "r.json"); });
  CHECK_MESSAGE(has(e, "r.json: give exactly one of 'layer'"), e);
  e = error_of([&] {
    kvcal::expand_recipe(json{{"name", "x"},
                              {"layer", {{"k", "none"}, {"v", "none"}}},
                              {"budget", {{"pyramid", {{"first", 1.5}, {"last", 0.1}}}}}},
                         cfg, "r.json");
  });
  CHECK_MESSAGE(has(e, "r.json: budget.pyramid.first: 1.5 is not a fraction"), e);
}

TEST_CASE("preset files: malformed metadata, missing recipe, wrong tensor shape, wrong model") {
  scratch_dir dir;
  const auto cfg = small_config(dir);
  const std::string bad = dir.file("bad.safetensors");
  kvcal::write_safetensors(bad, {}, {{kvcal::preset_metadata_key, "{\"format\": \"kvcal.pre"}});
  std::string e = error_of([&] { kvcal::preset_file p(bad); });
  CHECK_MESSAGE(has(e, "bad.safetensors: __metadata__.kvcal.preset: malformed JSON"), e);

  const std::string plain = dir.file("plain.safetensors");
  kvcal::write_safetensors(plain, {}, {{"other", "x"}});
  CHECK(!kvcal::is_preset_file(plain));
  e = error_of([&] { kvcal::preset_file p(plain); });
  CHECK_MESSAGE(has(e, "plain.safetensors: not a kvcal preset"), e);

  // Wrong tensor shape: the writer refuses, and so does the reader of a file written around it.
  const auto r =
      recipe_of({{"k", "none"}, {"v", {{"pca", {{"rank", 8}}}}}, {"policy", "full"}}, cfg);
  const auto req = kvcal::required_tensors(r);
  REQUIRE(req.size() == 4 * 2 * 2);
  std::vector<float> buf(64 * 64, 0.f);
  std::vector<kvcal::tensor_out> ts;
  for (const auto& q : req) ts.push_back({q.name, kvcal::st_dtype::F32, q.shape, buf.data()});
  ts[0].shape = {9, 64};
  e = error_of([&] { kvcal::write_preset(dir.file("w.safetensors"), r, ts); });
  CHECK_MESSAGE(
      has(e, "tensor 'layers.0.v.heads.0.pca.basis': shape [9, 64], the recipe needs [8, 64]"), e);
  CHECK(!kvcal::test::file_exists(dir.file("w.safetensors")));
  const std::string forged = dir.file("forged.safetensors");
  kvcal::write_safetensors(forged, ts,
                           {{kvcal::preset_metadata_key, kvcal::recipe_to_json(r).dump()}});
  e = error_of([&] { kvcal::preset_file p(forged); });
  CHECK_MESSAGE(has(e, "forged.safetensors: tensor 'layers.0.v.heads.0.pca.basis': shape [9, 64]"),
                e);
  ts[0].shape = {8, 64};
  ts.pop_back();
  e = error_of([&] { kvcal::write_preset(dir.file("w.safetensors"), r, ts); });
  CHECK_MESSAGE(has(e, "tensor 'layers.3.v.heads.1.pca.mean' (PCA mean, shape [64]) is missing"),
                e);

  // Wrong model: the field that differs, both values.
  kvcal::export_params p;
  p.template_name = "kivi-2";
  p.model_dir = make_model(dir, "small", 4, 8, 2, 64);
  p.out = dir.file("kivi.safetensors");
  kvcal::export_preset(p);
  kvcal::preset_file f(p.out);
  const std::string qwen = make_model(dir, "qwen", 28, 28, 4, 128, "qwen2") + "/config.json";
  e = error_of([&] { f.check_model(kvcal::read_model_config(qwen), qwen); });
  CHECK_MESSAGE(has(e, "model fingerprint: model_type is llama in the preset, qwen2 in " + qwen),
                e);
  const std::string wide = make_model(dir, "wide", 4, 8, 4, 64) + "/config.json";
  e = error_of([&] { f.check_model(kvcal::read_model_config(wide), wide); });
  CHECK_MESSAGE(has(e, "n_kv_heads is 2 in the preset, 4 in"), e);
  auto theta = kvcal::read_model_config(p.model_dir + "/config.json");
  theta.rope.theta = 500000;
  e = error_of([&] { f.check_model(theta, "edited"); });
  CHECK_MESSAGE(has(e, "rope.theta is 10000.0 in the preset, 500000.0 in edited"), e);
  theta = kvcal::read_model_config(p.model_dir + "/config.json");
  theta.config_sha256 = "00";
  CHECK(has(error_of([&] { f.check_model(theta, "edited"); }), "config_sha256"));
}

TEST_CASE("byte accounting: hand-computed cases") {
  scratch_dir dir;
  const auto cfg = small_config(dir);  // 4 layers, 2 KV heads, head_dim 64
  const json full_k{{"k", "none"}, {"policy", "full"}};

  SUBCASE("2-bit, group 32, fp16 scale + zero per group = 3 bits per element") {
    json l = full_k;
    l["v"] = {{"quant", {{"bits", 2}, {"group", 32}, {"axis", "per-token"}}}};
    const auto a = kvcal::account_bytes(recipe_of(l, cfg), 1000);
    const auto& v = a.layers[0].v;
    CHECK(v.codes == 1000 * 2 * 64 * 2 / 8);      // 32000
    CHECK(v.scales == 1000 * 2 * (64 / 32) * 4);  // 16000
    CHECK(v.total() == 1000.0 * 2 * 64 * 3 / 8);  // 3 bits per element
    CHECK(a.layers[0].k.total() == 1000.0 * 2 * 64 * 2);
    l["v"]["quant"]["symmetric"] = true;  // scale only: 2 + 16/32 bits
    CHECK(kvcal::account_bytes(recipe_of(l, cfg), 1000).layers[0].v.total() ==
          1000.0 * 2 * 64 * 2.5 / 8);
  }
  SUBCASE("KIVI-2 with a 128-token fp16 residual at 2k context") {
    const auto r = kvcal::expand_recipe(kvcal::preset_template("kivi-2"), cfg, "kivi-2");
    const auto a = kvcal::account_bytes(r, 2048);
    // Per head: 1920 quantized tokens = 60 groups of 32 along tokens (K) / 2 groups of 32 along
    // channels per token (V), plus 128 fp16 tokens.
    const double k_head = 1920.0 * 64 * 2 / 8 + 60.0 * 64 * 4 + 128.0 * 64 * 2;   // 62464
    const double v_head = 1920.0 * 64 * 2 / 8 + 1920.0 * 2 * 4 + 128.0 * 64 * 2;  // 62464
    CHECK(a.layers[0].k.total() == 2 * k_head);
    CHECK(a.layers[0].v.total() == 2 * v_head);
    CHECK(a.layers[0].indices == 0);
    CHECK(a.total() == 4 * 2 * (k_head + v_head));  // 999424
    CHECK(a.bytes_per_token() == doctest::Approx(488.0));
    CHECK(a.fp16_bytes == 2048.0 * 4 * 2 * 64 * 2 * 2);
    CHECK(a.ratio() == doctest::Approx(4194304.0 / 999424.0));
    // 16 more tokens do not fill a per-channel group: they stay fp16 in K.
    const auto b = kvcal::account_bytes(r, 2064);
    CHECK(b.layers[0].k.full_precision == 2 * (128.0 + 16) * 64 * 2);
    CHECK(b.layers[0].k.codes == a.layers[0].k.codes);
  }
  SUBCASE("H2O: 1/8 budget, fp16, int32 positions") {
    const auto r = kvcal::expand_recipe(kvcal::preset_template("h2o"), cfg, "h2o");
    const auto a = kvcal::account_bytes(r, 2048);
    CHECK(a.layers[0].retained == 256);
    CHECK(a.layers[0].k.total() == 2 * 256.0 * 64 * 2);
    CHECK(a.layers[0].indices == 2 * 256.0 * 4);
    CHECK(a.total() == 4 * (2 * 2 * 256.0 * 64 * 2 + 2 * 256.0 * 4));  // 532480
    CHECK(a.retained_fraction() == doctest::Approx(0.125));
    CHECK(a.ratio() == doctest::Approx(4194304.0 / 532480.0));
  }
  SUBCASE("StreamingLLM: 4 sinks + 1020 recent, no positions stored") {
    const auto r = kvcal::expand_recipe(kvcal::preset_template("streaming-llm"), cfg, "s");
    CHECK(kvcal::account_bytes(r, 2048).ratio() == doctest::Approx(2.0));
    CHECK(kvcal::account_bytes(r, 2048).layers[0].indices == 0);
    CHECK(kvcal::account_bytes(r, 512).ratio() == doctest::Approx(1.0));
  }
  SUBCASE("adaptive PCA int8: dormant up to compress_after, then keep_recent fp16") {
    json l = full_k;
    l["v"] = {{"pca", {{"rank", 32}, {"latent_bits", 8}}}};
    const auto r =
        recipe_of(l, cfg, {{"adaptive", {{"compress_after", 512}, {"keep_recent", 256}}}});
    CHECK(kvcal::account_bytes(r, 512).ratio() == doctest::Approx(1.0));
    const auto a = kvcal::account_bytes(r, 2048);
    // V per head: 256 fp16 + 1792 x (32 int8 latents + fp16 scale + zero).
    CHECK(a.layers[0].v.total() == 2 * (256.0 * 64 * 2 + 1792.0 * 32 + 1792.0 * 4));
    CHECK(a.layers[0].k.total() == 2 * 2048.0 * 64 * 2);
  }
  SUBCASE("hybrid: budget, guard, residual, per-channel leftovers, cluster centroids") {
    json l{{"k", {{"quant", {{"bits", 2}, {"group", 32}, {"axis", "per-channel"}}}}},
           {"v", {{"quant", {{"bits", 2}, {"group", 32}, {"axis", "per-token"}}}}},
           {"policy", {{"cluster", {{"k", 10}}}}},
           {"budget", {{"retain", 0.5}}},
           {"guard", 0.5},
           {"residual", 100}};
    const auto a = kvcal::account_bytes(recipe_of(l, cfg), 1000);
    // Per head: 500 kept = 100 residual + 200 guard (half of 400) + 200 compressed; 10 centroids.
    const auto& x = a.layers[0];
    CHECK(x.retained == 500);
    CHECK(x.k.codes == 2 * 192.0 * 64 * 2 / 8);  // 6 full groups of 32 tokens
    CHECK(x.k.scales == 2 * 6.0 * 64 * 4);
    CHECK(x.k.full_precision == 2 * (100.0 + 200 + 10 + 8) * 64 * 2);  // 8 tokens wait for a group
    CHECK(x.v.codes == 2 * 200.0 * 64 * 2 / 8);
    CHECK(x.v.scales == 2 * 200.0 * 2 * 4);
    CHECK(x.v.full_precision == 2 * 310.0 * 64 * 2);
    CHECK(x.indices == 2 * 500.0 * 4);
  }
  SUBCASE("per-head override is counted per head") {
    json l = full_k;
    l["v"] = "none";
    l["heads"] =
        json::array({json{{"v", {{"quant", {{"bits", 4}, {"group", 64}}}}}}, json::object()});
    const auto a = kvcal::account_bytes(recipe_of(l, cfg), 100);
    CHECK(a.layers[0].v.total() == 100.0 * 64 * 4 / 8 + 100.0 * 4 + 100.0 * 64 * 2);
  }
}

TEST_CASE("kvcal export and kvcal inspect: per-layer table and ratios at 2k / 8k / 32k") {
  scratch_dir dir;
  const std::string model = make_model(dir, "qwen", 28, 28, 4, 128, "qwen2");
  for (const auto& name : kvcal::preset_template_names()) {
    const std::string out = dir.file(name + ".safetensors");
    auto r = kvcal_run({"export", "--template", name, "--model", model, "--out", out});
    if (r.code != 0) {
      CHECK_MESSAGE(has(r.err, "needs calibrated tensors"), r.err);
      CHECK(r.code == 1);
      continue;
    }
    r = kvcal_run({"inspect", out});
    REQUIRE_MESSAGE(r.code == 0, r.err);
    CHECK(has(r.out, "kvcal preset, format kvcal.preset version 2"));
    CHECK(has(r.out, "recipe: " + name));
    CHECK(has(r.out, "bytes/token"));
    for (const char* ctx : {"     2048", "     8192", "    32768"}) CHECK(has(r.out, ctx));
    MESSAGE("kvcal inspect " << name << ":\n" << r.out);
  }
  auto r = kvcal_run({"export", "--model", model, "--out", dir.file("x.safetensors")});
  CHECK(r.code == 2);
  CHECK(has(r.err, "exactly one of --template and --recipe"));
  // A recipe file: malformed JSON, then a good one.
  const std::string rf = dir.file("r.json");
  kvcal::test::write_bytes(rf, "{\"name\": \"mine\", \"layer\": {");
  r = kvcal_run({"export", "--recipe", rf, "--model", model, "--out", dir.file("r.safetensors")});
  CHECK(r.code == 1);
  CHECK_MESSAGE(has(r.err, rf + ": malformed JSON"), r.err);
  kvcal::test::write_bytes(
      rf, R"({"name": "mine", "layer": {"k": {"quant": {"bits": 4, "axis": "per-channel"}},
             "v": {"quant": {"bits": 4}}, "residual": 32}})");
  r = kvcal_run({"export", "--recipe", rf, "--model", model, "--out", dir.file("r.safetensors")});
  CHECK_MESSAGE(r.code == 0, r.err);
  r = kvcal_run({"inspect", dir.file("r.safetensors")});
  CHECK(has(r.out, "0-27  4b ch g32"));
  // Plain safetensors files keep their plain description.
  kvcal::write_safetensors(dir.file("plain.safetensors"), {}, {});
  r = kvcal_run({"inspect", dir.file("plain.safetensors")});
  CHECK(has(r.out, "safetensors,"));
  r = kvcal_run({"--version"});
  CHECK(has(r.out, "kvcal.preset         version 2 read/write, reads 1 to 2"));
}
