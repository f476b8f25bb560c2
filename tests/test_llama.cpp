// model/: the Llama-family forward against transformers-generated fixtures
// (tests/fixtures/hf/*/expected.safetensors, fp32 eager attention), the plain cache, perplexity,
// and the loader's errors on damaged checkpoints.
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/app.h"
#include "kernels/common/error.h"
#include "kernels/common/log.h"
#include "model/decode_graph.h"
#include "model/full_cache.h"
#include "model/llama.h"
#include "model/perplexity.h"
#include "model/rope.h"
#include "model/static_cache.h"
#include "model/tokenizer.h"
#include "model/torch_util.h"
#include "runtime/io/safetensors.h"
#include "tests/test_util.h"
#include "tests/torch_doctest.h"

using namespace kvcal;

namespace {

const char* const fixtures[] = {"llama",   "llama3-rope",   "qwen2",
                                "mistral", "llama-headdim", "llama-sharded"};

std::string fixture_dir(const std::string& name) {
  return std::string(KVCAL_SOURCE_DIR) + "/tests/fixtures/hf/" + name;
}

struct expected {
  std::map<std::string, at::Tensor> t;
  const at::Tensor& operator[](const std::string& k) const {
    auto it = t.find(k);
    REQUIRE_MESSAGE(it != t.end(), k);
    return it->second;
  }
};

expected load_expected(const std::string& name) {
  safetensors_file f(fixture_dir(name) + "/expected.safetensors");
  expected e;
  for (const auto& tv : f.tensors()) e.t[tv.name] = to_tensor(tv);
  return e;
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  REQUIRE(a.sizes() == b.sizes());
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// Records the activations of every layer (batch row 0), as [T, heads, d] like the fixtures.
struct recorder : layer_hook {
  std::map<int, layer_activations> acts;
  void on_layer(const layer_activations& a) override { acts[a.layer] = a; }
};

const llama_model& model_of(const std::string& name) {
  static std::map<std::string, llama_model> cache;
  auto it = cache.find(name);
  if (it == cache.end())
    it = cache.emplace(name, llama_model::load(fixture_dir(name), at::kCPU, at::kFloat)).first;
  return it->second;
}

at::Tensor ids_of(const expected& e) {
  return e["input_ids"].unsqueeze(0);
}  // [1, 24]

}  // namespace

TEST_CASE("fp32 logits and layer activations match transformers for every fixture") {
  for (const std::string name : fixtures) {
    CAPTURE(name);
    const llama_model& m = model_of(name);
    const expected e = load_expected(name);
    full_cache cache(m.config(), 1, at::kCPU, at::kFloat);
    recorder rec;
    forward_options opt;
    opt.maybe_hook = &rec;
    at::Tensor logits = m.forward(ids_of(e), cache, opt);
    CHECK((logits.scalar_type() == at::kFloat));
    CHECK(logits.sizes() == at::IntArrayRef({1, 24, m.config().vocab_size}));
    const double err = max_abs_diff(logits[0], e["logits"]);
    CHECK_MESSAGE(err <= 1e-4, name, ": logits max abs err ", err);
    CHECK(cache.length() == 24);
    const int last = static_cast<int>(m.config().num_hidden_layers) - 1;
    for (int L : {0, last}) {
      CAPTURE(L);
      REQUIRE(rec.acts.count(L) == 1);
      const layer_activations& a = rec.acts[L];
      const std::string p = "layer" + std::to_string(L) + ".";
      CHECK(max_abs_diff(a.hidden[0], e[p + "hidden"]) <= 1e-5);
      CHECK(max_abs_diff(a.q[0].transpose(0, 1), e[p + "q"]) <= 1e-5);
      CHECK(max_abs_diff(a.k[0].transpose(0, 1), e[p + "k"]) <= 1e-5);
      // transformers' sliding-window cache (mistral) keeps only the last window - 1 keys.
      const at::Tensor& kr = e[p + "k_rope"];
      CHECK(max_abs_diff(a.k_rope[0].transpose(0, 1).narrow(0, 24 - kr.size(0), kr.size(0)), kr) <=
            1e-5);
      CHECK(max_abs_diff(a.v[0].transpose(0, 1), e[p + "v"]) <= 1e-5);
      CHECK(a.positions.sizes() == at::IntArrayRef({24}));
      CHECK(a.q_rope.sizes() == a.q.sizes());
    }
  }
}

TEST_CASE("prefill then single-token decode equals one full prefill") {
  for (const std::string name : fixtures) {
    CAPTURE(name);
    const llama_model& m = model_of(name);
    const expected e = load_expected(name);
    at::Tensor ids = ids_of(e);
    full_cache cache(m.config(), 1, at::kCPU, at::kFloat, /*capacity_hint=*/4);  // forces growth
    std::vector<at::Tensor> parts;
    parts.push_back(m.forward(ids.narrow(1, 0, 16), cache));
    CHECK(cache.length() == 16);
    for (int t = 16; t < 24; ++t) {
      parts.push_back(m.forward(ids.narrow(1, t, 1), cache));
      CHECK(cache.length() == t + 1);
    }
    at::Tensor stepped = at::cat(parts, 1);
    CHECK(max_abs_diff(stepped[0], e["logits"]) <= 1e-4);
    // logits_mode::last returns the last row only; none returns nothing.
    cache.reset();
    at::Tensor last = m.forward(ids, cache, {logits_mode::last});
    CHECK(last.sizes() == at::IntArrayRef({1, 1, m.config().vocab_size}));
    CHECK(max_abs_diff(last[0][0], e["logits"][23]) <= 1e-4);
    cache.reset();
    CHECK_FALSE(m.forward(ids, cache, {logits_mode::none}).defined());
    CHECK(cache.length() == 24);
  }
}

TEST_CASE("a batch of two rows equals each row alone") {
  for (const std::string name : {"llama", "qwen2", "mistral"}) {
    CAPTURE(name);
    const llama_model& m = model_of(name);
    const expected e = load_expected(name);
    at::Tensor a = e["input_ids"];
    at::Tensor b = a.flip(0);
    full_cache batch(m.config(), 2, at::kCPU, at::kFloat);
    at::Tensor both = m.forward(at::stack({a, b}), batch);  // [2, 24, V]
    full_cache one(m.config(), 1, at::kCPU, at::kFloat);
    at::Tensor la = m.forward(a.unsqueeze(0), one);
    one.reset();
    at::Tensor lb = m.forward(b.unsqueeze(0), one);
    CHECK(max_abs_diff(both[0], la[0]) <= 1e-4);
    CHECK(max_abs_diff(both[1], lb[0]) <= 1e-4);
    // and batched decode steps
    at::Tensor step = m.forward(at::stack({a.narrow(0, 0, 1), b.narrow(0, 0, 1)}), batch);
    CHECK(step.sizes() == at::IntArrayRef({2, 1, m.config().vocab_size}));
  }
}

TEST_CASE("sliding window (mistral, window 8): full cache masks keys at positions <= p - 8") {
  const llama_model& m = model_of("mistral");
  REQUIRE(m.config().sliding_window == 8);
  const expected e = load_expected("mistral");
  // Full prefill (24 tokens, 3 windows long) matches transformers' sliding mask...
  full_cache cache(m.config(), 1, at::kCPU, at::kFloat);
  CHECK(max_abs_diff(m.forward(ids_of(e), cache)[0], e["logits"]) <= 1e-4);
  // ...and so does decoding one token at a time across the window boundary.
  cache.reset();
  std::vector<at::Tensor> parts;
  for (int t = 0; t < 24; ++t) parts.push_back(m.forward(ids_of(e).narrow(1, t, 1), cache));
  CHECK(max_abs_diff(at::cat(parts, 1)[0], e["logits"]) <= 1e-4);
  // Without the window the logits differ (the fixture really exercises it).
  model_config no_window = m.config();
  no_window.sliding_window = 0;
  const llama_model full =
      llama_model::load(fixture_dir("mistral"), no_window, at::kCPU, at::kFloat);
  full_cache c2(no_window, 1, at::kCPU, at::kFloat);
  CHECK(max_abs_diff(full.forward(ids_of(e), c2)[0], e["logits"]) > 1e-3);
}

TEST_CASE("causal_attention: window and offset masks against a dense reference") {
  at::manual_seed(3);
  const std::int64_t B = 2, nkv = 2, rep = 3, S = 11, d = 8;
  at::Tensor k = at::randn({B, nkv, S, d}), v = at::randn({B, nkv, S, d});
  for (std::int64_t window : {0, 4}) {
    for (std::int64_t T : {1, 3, 11}) {
      CAPTURE(window);
      CAPTURE(T);
      const std::int64_t q_start = S - T;
      at::Tensor q = at::randn({B, nkv * rep, T, d});
      at::Tensor out = causal_attention(q, k, v, q_start, window);
      // Reference: per head, explicit loops over allowed keys.
      at::Tensor ref = at::zeros_like(q);
      for (std::int64_t h = 0; h < nkv * rep; ++h)
        for (std::int64_t t = 0; t < T; ++t) {
          const std::int64_t p = q_start + t;
          const std::int64_t lo = window > 0 ? std::max<std::int64_t>(0, p - window + 1) : 0;
          at::Tensor kk = k.select(1, h / rep).narrow(1, lo, p - lo + 1);  // [B, n, d]
          at::Tensor vv = v.select(1, h / rep).narrow(1, lo, p - lo + 1);
          at::Tensor s = at::bmm(kk, q.select(1, h).select(1, t).unsqueeze(2)).squeeze(2) /
                         std::sqrt(static_cast<double>(d));
          ref.select(1, h).select(1, t).copy_(
              at::bmm(at::softmax(s, -1).unsqueeze(1), vv).squeeze(1));
        }
      CHECK(max_abs_diff(out, ref) <= 1e-5);
    }
  }
}

TEST_CASE("RoPE parameters: linear, dynamic, llama3 and yarn follow transformers' formulas") {
  model_config c = model_of("llama").config();
  c.head_dim = 16;
  c.max_position_embeddings = 64;
  c.rope.theta = 10000.0;
  const at::Tensor base = compute_rope_params(c).inv_freq;
  // Default: 1 / theta^(2i/d).
  for (int i = 0; i < 8; ++i)
    CHECK(base[i].item<float>() ==
          doctest::Approx(1.0 / std::pow(10000.0, 2.0 * i / 16)).epsilon(1e-6));
  c.rope.type = rope_type::linear;
  c.rope.factor = 4.0;
  CHECK(max_abs_diff(compute_rope_params(c).inv_freq, base / 4.0) == 0.0);
  // Dynamic: unchanged up to max_position_embeddings, NTK-scaled base beyond it.
  c.rope.type = rope_type::dynamic;
  c.rope.factor = 2.0;
  CHECK(max_abs_diff(compute_rope_params(c).inv_freq, base) <= 1e-9);
  const double nb = 10000.0 * std::pow(2.0 * 128 / 64 - 1.0, 16.0 / 14.0);
  CHECK(compute_rope_params(c, 128).inv_freq[1].item<float>() ==
        doctest::Approx(1.0 / std::pow(nb, 2.0 / 16)).epsilon(1e-5));
  {
    rope r(c);
    at::Tensor pos = at::arange(120, 128, at::TensorOptions().dtype(at::kLong));
    rope_cos_sin a = r.cos_sin(pos, at::kFloat);
    at::Tensor f = at::outer(pos.to(at::kFloat), compute_rope_params(c, 128).inv_freq);
    CHECK(max_abs_diff(a.cos.narrow(1, 0, 8), f.cos()) <= 1e-6);
  }
  // Llama 3: high frequencies kept, low ones divided by factor, smooth in between.
  c.rope.type = rope_type::llama3;
  c.rope.factor = 8.0;
  c.rope.low_freq_factor = 1.0;
  c.rope.high_freq_factor = 4.0;
  c.rope.original_max_position_embeddings = 32;
  at::Tensor l3 = compute_rope_params(c).inv_freq;
  const double pi = 3.14159265358979323846;
  for (int i = 0; i < 8; ++i) {
    const double f = base[i].item<float>(), wl = 2 * pi / f;
    double want = f;
    if (wl > 32.0)
      want = f / 8.0;
    else if (wl >= 8.0) {
      const double s = (32.0 / wl - 1.0) / 3.0;
      want = (1 - s) * f / 8.0 + s * f;
    }
    CHECK(l3[i].item<float>() == doctest::Approx(want).epsilon(1e-5));
  }
  // YaRN: attention factor 0.1 ln(factor) + 1 multiplies cos and sin.
  c.rope.type = rope_type::yarn;
  c.rope.factor = 4.0;
  c.rope.original_max_position_embeddings = 16;
  rope_params y = compute_rope_params(c);
  CHECK(y.attention_scaling == doctest::Approx(0.1 * std::log(4.0) + 1.0));
  CHECK(y.inv_freq[0].item<float>() == doctest::Approx(1.0).epsilon(1e-6));  // extrapolated
  CHECK(y.inv_freq[7].item<float>() == doctest::Approx(base[7].item<float>() / 4.0).epsilon(1e-5));
  rope r(c);
  rope_cos_sin cs = r.cos_sin(at::zeros({1}, at::TensorOptions().dtype(at::kLong)), at::kFloat);
  CHECK(cs.cos[0][0].item<float>() == doctest::Approx(y.attention_scaling));
}

TEST_CASE("perplexity equals exp(mean NLL) computed by hand from the logits") {
  const std::string dir = fixture_dir("llama3-rope");
  const llama_model& m = model_of("llama3-rope");
  const tokenizer tok = tokenizer::load(dir);
  const std::string text =
      "In the beginning God created the heaven and the earth. And the earth was without form, "
      "and void; and darkness was upon the face of the deep.";
  const std::vector<std::int32_t> ids = tok.encode(text, true);
  REQUIRE(ids.size() > 20);
  CHECK(ids[0] == *tok.bos_id());  // this tokenizer's post-processor adds BOS
  const std::int64_t ctx = 8;
  double sum = 0;
  std::int64_t count = 0;
  for (std::size_t s = 0; s < ids.size(); s += ctx) {
    const std::size_t len = std::min<std::size_t>(ctx, ids.size() - s);
    if (len < 2) continue;
    at::Tensor w =
        at::empty({1, static_cast<std::int64_t>(len)}, at::TensorOptions().dtype(at::kLong));
    for (std::size_t i = 0; i < len; ++i) w[0][static_cast<std::int64_t>(i)] = ids[s + i];
    full_cache cache(m.config(), 1, at::kCPU, at::kFloat);
    at::Tensor lp = at::log_softmax(m.forward(w, cache)[0].to(at::kDouble), -1);
    for (std::size_t i = 0; i + 1 < len; ++i) {
      sum -= lp[static_cast<std::int64_t>(i)][ids[s + i + 1]].item<double>();
      ++count;
    }
  }
  perplexity_options o;
  o.context = ctx;
  o.show_progress = false;
  perplexity_result r = perplexity(m, ids, o);
  CHECK(r.predicted == count);
  CHECK(r.windows == static_cast<std::int64_t>((ids.size() + ctx - 1) / ctx) -
                         ((ids.size() % ctx) == 1 ? 1 : 0));
  CHECK(r.mean_nll == doctest::Approx(sum / static_cast<double>(count)).epsilon(1e-7));
  CHECK(r.ppl == doctest::Approx(std::exp(sum / static_cast<double>(count))).epsilon(1e-7));
  // max_tokens cuts the stream; the default context is min(max_position_embeddings, 2048).
  o.max_tokens = 10;
  CHECK(perplexity(m, ids, o).tokens == 10);
  CHECK(default_context(m.config()) == 256);
  o.context = 0;
  CHECK(perplexity(m, ids, o).context == 256);
}

// ---- bad input --------------------------------------------------------------------------------

namespace {

// Copies a fixture folder into `dir` (weights, config, tokenizer).
void copy_fixture(const std::string& name, const kvcal::test::scratch_dir& dir) {
  const int rc = std::system(("cp -r '" + fixture_dir(name) + "/.' '" + dir.path() + "/'").c_str());
  REQUIRE(rc == 0);
}

// Rewrites dir/model.safetensors with `edit` applied to its tensors.
template <typename Edit>
void rewrite_weights(const std::string& path, Edit edit) {
  std::vector<std::string> names;
  std::vector<std::vector<std::int64_t>> shapes;
  std::vector<st_dtype> dtypes;
  std::vector<std::string> data;
  {
    safetensors_file f(path);
    for (const auto& t : f.tensors()) {
      names.push_back(t.name);
      shapes.push_back(t.shape);
      dtypes.push_back(t.dtype);
      data.emplace_back(reinterpret_cast<const char*>(t.data), t.nbytes);
    }
  }
  std::vector<tensor_out> out;
  for (std::size_t i = 0; i < names.size(); ++i) {
    tensor_out t{names[i], dtypes[i], shapes[i], data[i].data()};
    if (edit(t)) out.push_back(t);
  }
  write_safetensors(path, out);
}

}  // namespace

TEST_CASE("damaged checkpoints fail with one clear error naming file and tensor") {
  SUBCASE("missing config.json") {
    kvcal::test::scratch_dir d;
    copy_fixture("llama", d);
    std::remove(d.file("config.json").c_str());
    CHECK_THROWS_WITH_AS(llama_model::load(d.path(), at::kCPU, at::kFloat),
                         doctest::Contains("config.json: not found"), kvcal::error);
  }
  SUBCASE("missing weights") {
    kvcal::test::scratch_dir d;
    copy_fixture("llama", d);
    std::remove(d.file("model.safetensors").c_str());
    CHECK_THROWS_WITH_AS(llama_model::load(d.path(), at::kCPU, at::kFloat),
                         doctest::Contains("no model weights (expected model.safetensors"),
                         kvcal::error);
  }
  SUBCASE("missing tokenizer") {
    kvcal::test::scratch_dir d;
    copy_fixture("llama", d);
    std::remove(d.file("tokenizer.json").c_str());
    kvcal::test::write_bytes(d.file("text.txt"), "hello world, hello world");
    eval_params p;
    p.model_dir = d.path();
    p.text_path = d.file("text.txt");
    p.show_progress = false;
    CHECK_THROWS_WITH_AS(run_eval(p), doctest::Contains("tokenizer.json: not found"), kvcal::error);
  }
  SUBCASE("unsupported model_type") {
    kvcal::test::scratch_dir d;
    copy_fixture("llama", d);
    std::string cfg = kvcal::test::read_bytes(d.file("config.json"));
    cfg.replace(cfg.find("\"llama\""), 7, "\"gpt_neox\"");
    kvcal::test::write_bytes(d.file("config.json"), cfg);
    CHECK_THROWS_WITH_AS(llama_model::load(d.path(), at::kCPU, at::kFloat),
                         doctest::Contains("model_type 'gpt_neox' is not supported"), kvcal::error);
  }
  SUBCASE("a tensor missing") {
    kvcal::test::scratch_dir d;
    copy_fixture("llama", d);
    rewrite_weights(d.file("model.safetensors"),
                    [](tensor_out& t) { return t.name != "model.layers.1.mlp.up_proj.weight"; });
    try {
      llama_model::load(d.path(), at::kCPU, at::kFloat);
      FAIL("no error");
    } catch (const kvcal::error& e) {
      const std::string msg = e.what();
      CHECK(msg.find("model.safetensors") != std::string::npos);
      CHECK(msg.find("missing tensor 'model.layers.1.mlp.up_proj.weight'") != std::string::npos);
    }
  }
  SUBCASE("a tensor with the wrong shape") {
    kvcal::test::scratch_dir d;
    copy_fixture("qwen2", d);
    rewrite_weights(d.file("model.safetensors"), [](tensor_out& t) {
      if (t.name == "model.layers.0.self_attn.k_proj.bias") t.shape = {t.shape[0] / 2, 2};
      return true;
    });
    CHECK_THROWS_WITH_AS(
        llama_model::load(d.path(), at::kCPU, at::kFloat),
        doctest::Contains(
            "tensor 'model.layers.0.self_attn.k_proj.bias' has shape [16, 2], expected [32]"),
        kvcal::error);
  }
  SUBCASE("truncated shard") {
    kvcal::test::scratch_dir d;
    copy_fixture("llama-sharded", d);
    const std::string shard = d.file("model-00002-of-00003.safetensors");
    std::string bytes = kvcal::test::read_bytes(shard);
    kvcal::test::write_bytes(shard, bytes.substr(0, bytes.size() / 2));
    CHECK_THROWS_WITH_AS(llama_model::load(d.path(), at::kCPU, at::kFloat),
                         doctest::Contains("model-00002-of-00003.safetensors"), kvcal::error);
  }
  SUBCASE("shard listed in the index but absent") {
    kvcal::test::scratch_dir d;
    copy_fixture("llama-sharded", d);
    std::remove(d.file("model-00003-of-00003.safetensors").c_str());
    CHECK_THROWS_WITH_AS(
        llama_model::load(d.path(), at::kCPU, at::kFloat),
        doctest::Contains("model-00003-of-00003.safetensors: weight shard not found"),
        kvcal::error);
  }
  SUBCASE("bf16 / fp16 on the CPU are refused") {
    CHECK_THROWS_WITH_AS(llama_model::load(fixture_dir("llama"), at::kCPU, at::kBFloat16),
                         doctest::Contains("fp32"), kvcal::error);
  }
  SUBCASE("token ids outside the vocabulary") {
    const llama_model& m = model_of("llama");
    full_cache c(m.config(), 1, at::kCPU, at::kFloat);
    at::Tensor ids = at::full({1, 2}, 320, at::TensorOptions().dtype(at::kLong));
    CHECK_THROWS_WITH_AS(m.forward(ids, c), doctest::Contains("outside the vocabulary"),
                         kvcal::error);
  }
}

TEST_CASE("kvcal eval on a fixture: exit 0 and JSON written; bad paths exit 1") {
  kvcal::test::scratch_dir d;
  kvcal::test::write_bytes(d.file("text.txt"),
                           "The quick brown fox jumps over the lazy dog. It's 12:45 and we've "
                           "got 3 tasks left. KV caches store keys and values.");
  const std::string json = d.file("out/ppl.json");
  REQUIRE(std::system(("mkdir -p '" + d.file("out") + "'").c_str()) == 0);
  auto run = [](std::vector<std::string> args, std::string* out = nullptr,
                std::string* err = nullptr) {
    std::ostringstream o, e;
    const int rc = kvcal::cli::run(args, o, e);
    kvcal::set_log_level(kvcal::log_level::info);
    if (out) *out = o.str();
    if (err) *err = e.str();
    return rc;
  };
  std::string out, err;
  const int rc = run({"eval", "-q", "--model", fixture_dir("qwen2"), "--text", d.file("text.txt"),
                      "--context", "16", "--json", json},
                     &out, &err);
  CHECK_MESSAGE(rc == 0, err);
  CHECK(out.find("PPL ") != std::string::npos);
  REQUIRE(kvcal::test::file_exists(json));
  const std::string j = kvcal::test::read_bytes(json);
  CHECK(j.find("\"ppl\"") != std::string::npos);
  CHECK(j.find("\"context\": 16") != std::string::npos);
  CHECK(j.find("\"bos_added\": false") != std::string::npos);  // qwen2: no BOS in its template
  CHECK(run({"eval", "-q", "--model", d.file("nope"), "--text", d.file("text.txt")}, nullptr,
            &err) == 1);
  CHECK(err.find("nope/config.json: not found") != std::string::npos);
  CHECK(run({"eval", "-q", "--model", fixture_dir("qwen2"), "--text", d.file("missing.txt")},
            nullptr, &err) == 1);
  CHECK(err.find("missing.txt") != std::string::npos);
  // --text defaults to the committed eval text (tests/test_cli.cpp); an empty one is refused.
  CHECK(run({"eval", "--model", fixture_dir("qwen2"), "--text", ""}) == 2);
  CHECK(run({"eval", "--model", "x", "--text", "y", "--context", "1"}) == 2);
}

TEST_CASE("RoPE cos/sin equal transformers' LlamaRotaryEmbedding for every scaling type") {
  // tests/fixtures/rope/expected.safetensors from tests/fixtures/make_rope_fixtures.py.
  const std::string path =
      std::string(KVCAL_SOURCE_DIR) + "/tests/fixtures/rope/expected.safetensors";
  if (!kvcal::test::file_exists(path)) {
    MESSAGE("skipped: ", path, " not generated yet");
    return;
  }
  safetensors_file f(path);
  int cases = 0;
  for (const auto& [name, config_text] : f.metadata()) {
    if (name == "transformers" || name == "format") continue;
    CAPTURE(name);
    const model_config cfg = parse_model_config(nlohmann::json::parse(config_text), name);
    const at::Tensor want_cos = to_tensor(f.at(name + ".cos"));  // [T, d]
    const at::Tensor want_sin = to_tensor(f.at(name + ".sin"));
    const std::int64_t T = want_cos.size(0);
    rope r(cfg);
    rope_cos_sin cs = r.cos_sin(at::arange(T, at::TensorOptions().dtype(at::kLong)), at::kFloat);
    CHECK(max_abs_diff(cs.cos, want_cos) <= 1e-6);
    CHECK(max_abs_diff(cs.sin, want_sin) <= 1e-6);
    const rope_params p = compute_rope_params(cfg, T);
    CHECK(max_abs_diff(p.inv_freq, to_tensor(f.at(name + ".inv_freq"))) <= 1e-9);
    CHECK(p.attention_scaling ==
          doctest::Approx(to_tensor(f.at(name + ".scaling"))[0].item<double>()).epsilon(1e-6));
    ++cases;
  }
  CHECK(cases >= 5);
}

TEST_CASE("static_cache (graph-capturable decode) matches the fixtures, with device positions") {
  for (const std::string name : {"llama", "qwen2", "mistral", "llama3-rope"}) {
    CAPTURE(name);
    const llama_model& m = model_of(name);
    const expected e = load_expected(name);
    at::Tensor ids = ids_of(e);
    static_cache cache(m.config(), 1, 40, at::kCPU, at::kFloat);
    std::vector<at::Tensor> parts{m.forward(ids.narrow(1, 0, 16), cache)};
    for (int t = 16; t < 24; ++t) {
      forward_options o;
      o.maybe_positions = at::full({1}, t, at::TensorOptions().dtype(at::kLong));
      parts.push_back(m.forward(ids.narrow(1, t, 1), cache, o));
    }
    CHECK(cache.length() == 24);
    CHECK(max_abs_diff(at::cat(parts, 1)[0], e["logits"]) <= 1e-4);
    // One token at a time from the start (every step through the masked full-capacity path).
    cache.reset();
    parts.clear();
    for (int t = 0; t < 24; ++t) parts.push_back(m.forward(ids.narrow(1, t, 1), cache));
    CHECK(max_abs_diff(at::cat(parts, 1)[0], e["logits"]) <= 1e-4);
    CHECK_THROWS_WITH_AS(m.forward(ids, cache), doctest::Contains("capacity 40 exceeded"),
                         kvcal::error);
  }
  if (!decode_graph::available())
    CHECK_THROWS_AS(decode_graph(model_of("llama"), 1, 8), kvcal::error);
}
