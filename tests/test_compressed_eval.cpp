// Quality through the compressed cache (model/compressed_eval.h, model/tasks_eval.h,
// model/generate.h): decode-PPL with an fp16 preset equals the plain cache's, 8-bit stays close,
// 2-bit is worse on the reference model; the retrieval harness reads, selects and scores task
// files; generate --greedy is argmax decoding; bad inputs fail naming the file (and line).
#include <cmath>
#include <exception>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cli/app.h"
#include "kernels/common/error.h"
#include "kernels/common/log.h"
#include "model/attention_error_probe.h"
#include "model/compressed_eval.h"
#include "model/full_cache.h"
#include "model/generate.h"
#include "model/gpu_packed_options.h"
#include "model/runtime_cache.h"
#include "model/tasks_eval.h"
#include "model/tokenizer.h"
#include "presets/preset_export.h"
#include "presets/preset_template.h"
#include "runtime/kv_codec.h"
#include "runtime/model_config.h"
#include "runtime/preset_recipe.h"
#include "tests/test_recipes.h"
#include "tests/test_util.h"
#include "tests/torch_doctest.h"

using namespace kvcal;

namespace {

const std::string src = KVCAL_SOURCE_DIR;
std::string fixture_dir(const std::string& name) {
  return src + "/tests/fixtures/hf/" + name;
}
const std::string ref_dir = src + "/data/models/kvcal-ref-v1";

const llama_model& model_of(const std::string& dir) {
  static std::map<std::string, llama_model> cache;
  auto it = cache.find(dir);
  if (it == cache.end())
    it = cache.emplace(dir, llama_model::load(dir, at::kCPU, at::kFloat)).first;
  return it->second;
}

using test::quant;
using test::recipe_for;

// A deterministic pseudo-text stream of fixture token ids.
std::vector<std::int32_t> stream(std::int64_t n, std::int64_t vocab) {
  std::vector<std::int32_t> ids;
  for (std::int64_t i = 0; i < n; ++i)
    ids.push_back(static_cast<std::int32_t>((i * 37 + i / 5 + 11) % vocab));
  return ids;
}

struct cli_result {
  int code;
  std::string out, err;
};
cli_result kvcal_run(std::vector<std::string> args) {
  std::ostringstream out, err;
  const int code = kvcal::cli::run(args, out, err);
  return {code, out.str(), err.str()};
}

std::string export_template(const std::string& name, const std::string& model_dir,
                            const std::string& out) {
  export_params p;
  p.template_name = name;
  p.model_dir = model_dir;
  p.out = out;
  export_preset(p);
  return out;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("decode-PPL: fp16 preset equals the plain cache, 8-bit close, protocol counts") {
  set_log_level(log_level::warn);
  const llama_model& m = model_of(fixture_dir("llama"));
  const model_config& cfg = m.config();
  const auto ids = stream(200, cfg.vocab_size);
  decode_ppl_options o;
  o.context = 96;
  o.prefill = 40;
  o.show_progress = false;
  full_cache plain(cfg, 1, at::kCPU, at::kFloat);
  const decode_ppl_result base = decode_perplexity(m, ids, plain, o);
  // Windows of 96, 96, 8: the last is no longer than the prefill and scores nothing.
  CHECK(base.windows == 2);
  CHECK(base.predicted == 2 * (96 - 40));
  // The decode protocol scores the same tokens as the one-forward PPL of those positions.
  runtime_cache fp(cfg, recipe_for(cfg, kv_method{}, kv_method{}, 0), {}, 1);
  const decode_ppl_result f = decode_perplexity(m, ids, fp, o, &fp);
  MESSAGE("baseline ", base.ppl, " fp16 preset ", f.ppl);
  CHECK(std::abs(f.ppl / base.ppl - 1) <= 1e-3);
  REQUIRE(f.has_stats);
  // The last token of a window is scored, never fed: the cache ends holding 95.
  CHECK(f.cached_tokens == 95);
  CHECK(f.fp16_bytes ==
        doctest::Approx(95.0 * 2 * 2 * 16 * 2 * 2));  // tok x layers x kv x d x K,V x 2B
  CHECK(f.bytes_held > 0);

  const int d = static_cast<int>(cfg.head_dim);
  runtime_cache q8(cfg,
                   recipe_for(cfg, quant(8, 16, quant_axis::per_channel),
                              quant(8, d, quant_axis::per_token), 16),
                   {}, 1);
  const decode_ppl_result e = decode_perplexity(m, ids, q8, o, &q8);
  MESSAGE("8-bit: ", e.ppl, " ratio ", e.ratio());
  CHECK(std::abs(e.ppl / base.ppl - 1) <= 1e-2);
  CHECK(e.bytes_held < f.bytes_held);  // (page slack dominates the ratio at 95 tokens)

  // Per-layer attention error against exact attention over the same inputs: tiny for fp16
  // storage, clearly larger at 2 bits, and the probe does not change what the model computes.
  runtime_cache fp2(cfg, recipe_for(cfg, kv_method{}, kv_method{}, 0), {}, 1);
  attention_error_probe p16(fp2, cfg, at::kCPU, at::kFloat, 96);
  const decode_ppl_result f2 = decode_perplexity(m, ids, p16, o, &fp2);
  CHECK(f2.ppl == doctest::Approx(f.ppl).epsilon(1e-9));
  runtime_cache q2(cfg,
                   recipe_for(cfg, quant(2, 16, quant_axis::per_channel),
                              quant(2, d, quant_axis::per_token), 16),
                   {}, 1);
  attention_error_probe p2(q2, cfg, at::kCPU, at::kFloat, 96);
  decode_perplexity(m, ids, p2, o, &q2);
  const std::vector<double> e16 = p16.relative_errors(), e2 = p2.relative_errors();
  REQUIRE(e16.size() == static_cast<std::size_t>(cfg.num_hidden_layers));
  REQUIRE(e2.size() == e16.size());
  for (std::size_t l = 0; l < e16.size(); ++l) {
    MESSAGE("layer ", l, ": attention error fp16 ", e16[l], ", 2-bit ", e2[l]);
    CHECK(e16[l] < 5e-3);
    CHECK(e2[l] > 0.02);
    CHECK(e2[l] > 10 * e16[l]);
  }

  o.prefill = 96;
  CHECK(error_of([&] { decode_perplexity(m, ids, plain, o); }).find("--prefill") !=
        std::string::npos);
}

TEST_CASE("run_compressed_eval end to end with an exported fp16 preset; bad presets") {
  set_log_level(log_level::warn);
  test::scratch_dir dir;
  const std::string text = dir.file("t.txt");
  std::string body;
  for (int i = 0; i < 40; ++i) body += "the quick brown fox jumps over the lazy dog. ";
  test::write_bytes(text, body);
  const std::string fp16 =
      export_template("fp16", fixture_dir("llama"), dir.file("fp16.safetensors"));
  compressed_eval_params p;
  p.base.model_dir = fixture_dir("llama");
  p.base.text_path = text;
  p.base.context = 64;
  p.base.max_tokens = 192;
  p.base.show_progress = false;
  p.base.json_out = dir.file("out.json");
  p.presets = {fp16};
  const compressed_eval_result r = run_compressed_eval(p);
  REQUIRE(r.presets.size() == 1);
  CHECK(r.baseline.prefill == 32);
  CHECK(std::abs(r.presets[0].ppl.ppl / r.baseline.ppl - 1) <= 1e-3);
  CHECK(test::read_bytes(dir.file("out.json")).find("delta_ppl_pct") != std::string::npos);
  CHECK(compressed_eval_report(r).find("| fp16 |") != std::string::npos);
  // The bytes column says what it counts: the CPU runtime's pages (--gpu-kernels: live bytes).
  CHECK(!r.gpu_kernels);
  CHECK(compressed_eval_report(r).find("the CPU runtime's pages, as allocated") !=
        std::string::npos);
  CHECK(nlohmann::json::parse(test::read_bytes(dir.file("out.json")))["gpu_kernels"] == false);
  compressed_eval_result rg = r;
  rg.gpu_kernels = true;
  CHECK(compressed_eval_report(rg).find("the GPU cache's live records + fp16 rows") !=
        std::string::npos);
  CHECK(r.presets[0].ppl.attn_rel_error.size() == 2);  // one per layer of the fixture
  CHECK(test::read_bytes(dir.file("out.json")).find("attn_rel_error_per_layer") !=
        std::string::npos);
  CHECK(compressed_eval_report(r).find("per-layer attention-output relative error") !=
        std::string::npos);

  // A preset for another model: the error names the preset and the model's config.
  const std::string other =
      export_template("fp16", fixture_dir("llama-headdim"), dir.file("other.safetensors"));
  p.presets = {other};
  const std::string e = error_of([&] { run_compressed_eval(p); });
  MESSAGE(e);
  CHECK(e.find("other.safetensors") != std::string::npos);
  CHECK(e.find(fixture_dir("llama") + "/config.json") != std::string::npos);
  // The same through the CLI: exit code 1, one line.
  auto c = kvcal_run({"eval", "--model", fixture_dir("llama"), "--text", text, "--preset", other,
                      "--context", "64", "--max-tokens", "128"});
  CHECK(c.code == 1);
  CHECK(c.err.find("other.safetensors") != std::string::npos);
}

TEST_CASE("task files: reading, selection, answer rule, bad input names file:line") {
  test::scratch_dir dir;
  const std::string f = dir.file("passkey_eval.jsonl");
  test::write_bytes(f,
                    "{\"prompt\": \"a\", \"answer\": \" 1\", \"length\": 256, \"depth\": 0.0}\n"
                    "{\"prompt\": \"b\", \"answer\": \" 2\", \"length\": 256, \"depth\": 0.0}\n"
                    "\n"
                    "{\"prompt\": \"c\", \"answer\": \" 3\", \"length\": 256, \"depth\": 0.5}\n"
                    "{\"prompt\": \"d\", \"answer\": \" 4\", \"length\": 512, \"depth\": 0.0}\n");
  const auto all = read_task_file(f, "passkey");
  REQUIRE(all.size() == 4);
  CHECK(all[2].where == f + ":4");
  const auto sel = select_tasks(all, {256}, 2);
  REQUIRE(sel.size() == 2);
  CHECK(sel[0].prompt == "a");
  CHECK(sel[1].prompt == "c");  // round-robin over depths
  CHECK(select_tasks(all, {}, 0).size() == 4);

  CHECK(answer_matches(" 80160.", " 80160"));
  CHECK(answer_matches(" 80160 is the pass key", "80160"));
  CHECK_FALSE(answer_matches(" 8016", "80160"));
  CHECK_FALSE(answer_matches("", "80160"));
  CHECK_FALSE(answer_matches(" x 80160", "80160"));

  CHECK(error_of([&] {
          read_task_file(dir.file("missing.jsonl"), "passkey");
        }).find("missing.jsonl: cannot open") != std::string::npos);
  const std::string bad = dir.file("bad.jsonl");
  test::write_bytes(bad,
                    "{\"prompt\": \"a\", \"answer\": \" 1\", \"length\": 256, \"depth\": 0.0}\n"
                    "{\"prompt\": \"a\", \"answer\": \n");
  CHECK(error_of([&] { read_task_file(bad, "passkey"); }).find(bad + ":2:") != std::string::npos);
  const std::string no_answer = dir.file("noans.jsonl");
  test::write_bytes(no_answer, "{\"prompt\": \"a\", \"length\": 256}\n");
  CHECK(error_of([&] { read_task_file(no_answer, "passkey"); }).find(no_answer + ":1:") !=
        std::string::npos);
  // Through the CLI: a missing task file is a run-time error naming it.
  auto c = kvcal_run({"eval", "--model", fixture_dir("llama"), "--no-ppl", "--task-file",
                      dir.file("nope_eval.jsonl")});
  CHECK(c.code == 1);
  CHECK(c.err.find("nope_eval.jsonl") != std::string::npos);
}

TEST_CASE("generate --greedy is argmax decoding with the plain cache; sampling is seeded") {
  const llama_model& m = model_of(fixture_dir("llama"));
  const model_config& cfg = m.config();
  const std::vector<std::int32_t> prompt = {5, 17, 101, 42, 7, 300, 12};
  full_cache c(cfg, 1, at::kCPU, at::kFloat);
  sampling_options g;
  const auto got = generate_tokens(m, c, prompt, 12, g);
  // Reference: full re-forward of the whole sequence each step, argmax of the last logits.
  std::vector<std::int64_t> seq(prompt.begin(), prompt.end());
  std::vector<std::int32_t> want;
  for (int s = 0; s < 12; ++s) {
    full_cache fresh(cfg, 1, at::kCPU, at::kFloat);
    at::Tensor ids = at::tensor(seq, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
    at::Tensor logits = m.forward(ids, fresh);  // [1, T, V]
    const auto next = logits[0][logits.size(1) - 1].argmax().item<std::int64_t>();
    want.push_back(static_cast<std::int32_t>(next));
    seq.push_back(next);
  }
  CHECK(got == want);
  // fp16 preset: same greedy tokens.
  runtime_cache rc(cfg, recipe_for(cfg, kv_method{}, kv_method{}, 0), {}, 1);
  CHECK(generate_tokens(m, rc, prompt, 12, g) == want);
  // Sampling: same seed, same tokens; top-p tiny = greedy.
  sampling_options s;
  s.greedy = false;
  s.temperature = 0.8;
  s.top_p = 0.9;
  s.seed = 7;
  CHECK(generate_tokens(m, c, prompt, 12, s) == generate_tokens(m, c, prompt, 12, s));
  s.top_p = 1e-6;
  CHECK(generate_tokens(m, c, prompt, 12, s) == want);

  // The CLI streams text and prints the rate and the cache's bytes.
  test::scratch_dir dir;
  const std::string fp16 =
      export_template("fp16", fixture_dir("llama"), dir.file("fp16.safetensors"));
  auto r = kvcal_run({"generate", "--model", fixture_dir("llama"), "--preset", fp16, "--prompt",
                      "hello world", "--max-new", "5", "--greedy"});
  CHECK(r.code == 0);
  CHECK(r.out.find("tokens/s") != std::string::npos);
  CHECK(r.out.find("cache holds") != std::string::npos);
  CHECK(kvcal_run({"generate", "--model", fixture_dir("llama"), "--max-new", "5"}).code == 2);
}

TEST_CASE("reference model: 2-bit worse than baseline, 8-bit close; passkey with the baseline") {
  set_log_level(log_level::warn);
  test::scratch_dir dir;
  const std::string kivi2 = export_template("kivi-2", ref_dir, dir.file("kivi-2.safetensors"));
  compressed_eval_params p;
  p.base.model_dir = ref_dir;
  p.base.text_path = src + "/data/eval.txt";
  p.base.context = 1024;
  p.base.max_tokens = 1024;
  p.prefill = 512;  // then 511 decode steps over a cache of which all but 128 tokens are 2-bit
  p.base.show_progress = false;
  const std::string q8_recipe = dir.file("q8.json");
  test::write_bytes(q8_recipe, R"({"name": "q8", "layer": {
      "k": {"quant": {"bits": 8, "group": 32, "axis": "per-channel", "symmetric": false}},
      "v": {"quant": {"bits": 8, "group": 64, "axis": "per-token", "symmetric": false}},
      "policy": "full", "residual": 128}})");
  export_params ep;
  ep.recipe_path = q8_recipe;
  ep.model_dir = ref_dir;
  ep.out = dir.file("q8.safetensors");
  export_preset(ep);
  p.presets = {kivi2, ep.out};
  p.task_files = {src + "/data/tasks/passkey_eval.jsonl"};
  p.task_lengths = {256};
  p.task_limit = 2;
  const compressed_eval_result r = run_compressed_eval(p);
  MESSAGE("baseline ", r.baseline.ppl, " kivi-2 ", r.presets[0].ppl.ppl, " ratio ",
          r.presets[0].ppl.ratio());
  CHECK(r.presets[0].ppl.ppl > r.baseline.ppl);
  MESSAGE("8-bit ", r.presets[1].ppl.ppl, " ratio ", r.presets[1].ppl.ratio());
  CHECK(std::abs(r.presets[1].ppl.ppl / r.baseline.ppl - 1) <= 2e-3);
  CHECK(r.presets[1].ppl.ratio() > 1.3);
  CHECK(r.presets[0].ppl.ratio() > 2.0);
  REQUIRE(r.task_instances == 2);
  CHECK(r.accuracy("passkey", 0) == 1.0);
  MESSAGE("passkey@256 kivi-2: ", r.accuracy("passkey", 1));
}

// `kvcal eval --gpu-kernels` builds each preset's GPU cache options with gpu_packed_options_of
// (no device needed to build them): a V PCA preset maps to the V latent mode with its adaptive
// rule and the maps of every layer and KV head (PCA: dec_w = basis^T, dec_b = mean); a rank the
// kernels do not take is refused naming the preset and the reason.
TEST_CASE("gpu_packed_options_of: V PCA presets map to the GPU cache's latent mode") {
  const model_config cfg =
      read_model_config(std::string(KVCAL_SOURCE_DIR) + "/data/models/kvcal-ref-v1/config.json");
  preset_recipe r =
      expand_recipe(preset_template("knlp-v-pca-int8"), cfg, "knlp", recipe_parse_options{true});
  const int rank = 32, d = static_cast<int>(cfg.head_dim);
  for (auto& l : r.layers) l.v.pca.rank = rank;
  std::vector<std::vector<float>> store;
  std::vector<tensor_view> tv;
  for (std::int64_t l = 0; l < cfg.num_hidden_layers; ++l)
    for (std::int64_t h = 0; h < cfg.num_key_value_heads; ++h)
      for (const bool basis : {true, false}) {
        const std::size_t n = basis ? static_cast<std::size_t>(rank * d) : std::size_t(d);
        std::vector<float> v(n);
        for (std::size_t i = 0; i < n; ++i)
          v[i] = std::cos(0.1f * static_cast<float>(i + 7 * l + h));
        store.push_back(std::move(v));
        tensor_view t;
        t.name = "layers." + std::to_string(l) + ".v.heads." + std::to_string(h) +
                 (basis ? ".pca.basis" : ".pca.mean");
        t.shape = basis ? std::vector<std::int64_t>{rank, d} : std::vector<std::int64_t>{d};
        tv.push_back(t);
      }
  for (std::size_t i = 0; i < tv.size(); ++i) {  // pointers once the store stopped growing
    tv[i].data = reinterpret_cast<const std::uint8_t*>(store[i].data());
    tv[i].nbytes = store[i].size() * sizeof(float);
  }
  const gpu_packed_cache::options o = gpu_packed_options_of(r, tv, "knlp.safetensors", at::kCPU);
  CHECK(o.bits == 16);  // K fp16
  CHECK(o.residual == 256);
  CHECK(o.compress_after == 512);
  CHECK(o.v_latent_rank == rank);
  CHECK(o.v_latent_bits == 8);
  CHECK(o.k_latent_rank == 0);
  CHECK(!o.evicts());
  REQUIRE(o.v_maps);
  REQUIRE(static_cast<std::int64_t>(o.v_maps->size()) == cfg.num_hidden_layers);
  const linear_maps& m = (*o.v_maps)[3][1];  // layer 3, KV head 1
  const std::vector<float>& basis =
      store[static_cast<std::size_t>(2 * (3 * cfg.num_key_value_heads + 1))];
  const std::vector<float>& mean =
      store[static_cast<std::size_t>(2 * (3 * cfg.num_key_value_heads + 1) + 1)];
  REQUIRE(m.rank == rank);
  for (int c = 0; c < d; ++c) {
    CHECK(m.dec_b[static_cast<std::size_t>(c)] == mean[static_cast<std::size_t>(c)]);
    for (int i = 0; i < rank; ++i)
      CHECK(m.dec_w[static_cast<std::size_t>(c * rank + i)] ==
            basis[static_cast<std::size_t>(i * d + c)]);
  }
  auto r48 = r;
  for (auto& l : r48.layers) l.v.pca.rank = 48;
  std::string err;
  try {
    gpu_packed_options_of(r48, tv, "knlp.safetensors", at::kCPU);
  } catch (const std::exception& e) {
    err = e.what();
  }
  CHECK_MESSAGE(err.find("knlp.safetensors: the CUDA kernels cannot run this preset: V latent "
                         "rank 48") != std::string::npos,
                err);
}

// K and V PCA at head_dim 128 (the K latent mode's): both streams' maps, K's from the k tensors
// (dec_w = basis^T, dec_b = mean, enc_b = -basis mean); a K rank other than V's is refused naming
// the preset.
TEST_CASE("gpu_packed_options_of: K+V PCA presets map to the GPU cache's K latent mode") {
  model_config cfg =
      read_model_config(std::string(KVCAL_SOURCE_DIR) + "/data/models/kvcal-ref-v1/config.json");
  cfg.head_dim = 128;
  cfg.num_hidden_layers = 2;
  preset_recipe r =
      expand_recipe(preset_template("knlp-v-pca-int8"), cfg, "kv", recipe_parse_options{true});
  const int rank = 16, d = 128;
  r.adaptive.enabled = false;
  for (auto& l : r.layers) {
    l.k = kv_method{};
    l.k.kind = kv_method_kind::pca;
    l.k.pca.rank = rank;
    l.k.pca.latent_bits = 4;
    l.v.pca.rank = rank;
    l.v.pca.latent_bits = 16;
    l.residual = 64;
  }
  // [layer][head][stream K, V][basis, mean]
  std::vector<std::vector<float>> store;
  std::vector<tensor_view> tv;
  for (std::int64_t l = 0; l < cfg.num_hidden_layers; ++l)
    for (std::int64_t h = 0; h < cfg.num_key_value_heads; ++h)
      for (const char* stream : {".k", ".v"})
        for (const bool basis : {true, false}) {
          const std::size_t n = basis ? static_cast<std::size_t>(rank * d) : std::size_t(d);
          std::vector<float> v(n);
          const float seed = static_cast<float>(7 * l + h) + (stream[1] == 'k' ? 0.5f : 0.0f);
          for (std::size_t i = 0; i < n; ++i) v[i] = std::cos(0.1f * static_cast<float>(i) + seed);
          store.push_back(std::move(v));
          tensor_view t;
          t.name = "layers." + std::to_string(l) + stream + ".heads." + std::to_string(h) +
                   (basis ? ".pca.basis" : ".pca.mean");
          t.shape = basis ? std::vector<std::int64_t>{rank, d} : std::vector<std::int64_t>{d};
          tv.push_back(t);
        }
  for (std::size_t i = 0; i < tv.size(); ++i) {
    tv[i].data = reinterpret_cast<const std::uint8_t*>(store[i].data());
    tv[i].nbytes = store[i].size() * sizeof(float);
  }
  const gpu_packed_cache::options o = gpu_packed_options_of(r, tv, "kv.safetensors", at::kCPU);
  CHECK(o.bits == 16);
  CHECK(o.residual == 64);
  CHECK(o.compress_after == -1);
  CHECK(o.v_latent_rank == rank);
  CHECK(o.v_latent_bits == 16);
  CHECK(o.k_latent_rank == rank);
  CHECK(o.k_latent_bits == 4);
  REQUIRE(o.k_maps);
  REQUIRE(o.v_maps);
  REQUIRE(static_cast<std::int64_t>(o.k_maps->size()) == cfg.num_hidden_layers);
  const std::int64_t H = cfg.num_key_value_heads;
  double worst = 0;
  for (std::int64_t l = 0; l < cfg.num_hidden_layers; ++l)
    for (std::int64_t h = 0; h < H; ++h)
      for (const bool key : {true, false}) {
        const linear_maps& m =
            (key ? *o.k_maps : *o.v_maps)[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)];
        const std::size_t at = static_cast<std::size_t>(4 * (l * H + h) + (key ? 0 : 2));
        const std::vector<float>& basis = store[at];
        const std::vector<float>& mean = store[at + 1];
        REQUIRE(m.rank == rank);
        REQUIRE(m.d == d);
        for (int i = 0; i < rank; ++i) {
          double eb = 0;
          for (int c = 0; c < d; ++c) {
            const float b = basis[static_cast<std::size_t>(i * d + c)];
            worst = std::max(worst,
                             std::abs(double(m.dec_w[static_cast<std::size_t>(c * rank + i)]) - b));
            worst =
                std::max(worst, std::abs(double(m.enc_w[static_cast<std::size_t>(i * d + c)]) - b));
            eb -= double(b) * mean[static_cast<std::size_t>(c)];
          }
          worst = std::max(worst, std::abs(m.enc_b[static_cast<std::size_t>(i)] - eb) / 8);
        }
        for (int c = 0; c < d; ++c)
          worst = std::max(worst, std::abs(double(m.dec_b[static_cast<std::size_t>(c)]) -
                                           mean[static_cast<std::size_t>(c)]));
      }
  CHECK(worst <= 1e-5);
  auto r32 = r;  // K rank 32 with V rank 16
  for (auto& l : r32.layers) l.k.pca.rank = 32;
  std::string err;
  try {
    gpu_packed_options_of(r32, tv, "kv.safetensors", at::kCPU);
  } catch (const std::exception& e) {
    err = e.what();
  }
  CHECK_MESSAGE(err.find("kv.safetensors: the CUDA kernels cannot run this preset: K latent rank "
                         "32 with V latent rank 16") != std::string::npos,
                err);
}
