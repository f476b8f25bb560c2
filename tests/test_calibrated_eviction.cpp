// Eviction presets made from calibration (issue 10) on the reference model kvcal-ref-v1, CPU:
// the learned chain capture -> train-policy (future-attn and h2o-label) -> export -> runtime,
// where the runtime's learned scores of the held tokens must equal the trained network evaluated
// with libtorch on the captured features; and per-KV-head budgets from the capture's attention
// entropy (export --head-budgets), against hand-computed entropies and splits.
#include <ATen/ATen.h>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "calibrate/attention_entropy.h"
#include "calibrate/capture.h"
#include "calibrate/capture_reader.h"
#include "kernels/common/log.h"
#include "model/llama.h"
#include "model/runtime_cache.h"
#include "presets/preset_export.h"
#include "presets/preset_head_budgets.h"
#include "runtime/byte_accounting.h"
#include "runtime/eviction/evicting_layer.h"
#include "runtime/io/safetensors.h"
#include "tests/ref_capture.h"
#include "tests/test_util.h"
#include "tests/torch_doctest.h"
#include "train/policy_train.h"

using namespace kvcal;

namespace {

std::size_t sz(std::int64_t n) {
  return static_cast<std::size_t>(n);
}

std::string ref_model() {
  return std::string(KVCAL_SOURCE_DIR) + "/data/models/kvcal-ref-v1";
}

bool have_ref() {
  return static_cast<bool>(std::ifstream(ref_model() + "/config.json"));
}

constexpr std::int64_t seq_len = test::ref_capture_seq_len;

at::Tensor tensor_of(const safetensors_file& f, const std::string& name) {
  const tensor_view& t = f.at(name);
  std::vector<float> v = to_float(t);
  return at::from_blob(v.data(), t.shape, at::kFloat).clone();
}

// The trained network of layer `l` from train-policy's file, run with libtorch on x [n, in_dim]:
// Linear (-> ReLU -> Linear ...), out [n, n_kv].
at::Tensor libtorch_scores(const safetensors_file& f, int l, const at::Tensor& x) {
  const std::string pre = "layers." + std::to_string(l) + ".policy.";
  if (f.find(pre + "weight"))
    return at::linear(x, tensor_of(f, pre + "weight"), tensor_of(f, pre + "bias"));
  at::Tensor y = x;
  for (int i = 1; f.find(pre + "fc" + std::to_string(i) + ".weight"); ++i) {
    if (i > 1) y = at::relu(y);
    const std::string fc = pre + "fc" + std::to_string(i) + ".";
    y = at::linear(y, tensor_of(f, fc + "weight"), tensor_of(f, fc + "bias"));
  }
  return y;
}

}  // namespace

TEST_CASE("learned chain on kvcal-ref-v1: capture -> train-policy -> export -> runtime scores") {
  if (!have_ref()) {
    MESSAGE("data/models/kvcal-ref-v1 absent: skipped");
    return;
  }
  set_log_level(log_level::error);
  test::scratch_dir dir;
  const std::string cap = test::tiny_ref_capture(dir);
  capture_reader cr(cap);
  REQUIRE(cr.n_tokens() == 4 * seq_len);
  const llama_model m = llama_model::load(ref_model(), at::kCPU, at::kFloat);
  const model_config& cfg = m.config();
  const int L = cfg.num_hidden_layers, H = cfg.num_key_value_heads, d = cfg.head_dim;
  // Sequence 0's tokens, run through the runtime from position 0 as the capture did.
  const std::vector<std::int32_t> ids32 = cr.read_tokens("ids", 0, seq_len);
  std::vector<std::int64_t> ids64(ids32.begin(), ids32.end());
  const at::Tensor ids = at::tensor(ids64, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);

  struct chain {
    const char* recipe;
    int hidden;
    bool key;
  };
  for (const chain ch : {chain{"future-attn", 32, false}, chain{"h2o-label", 16, true}}) {
    CAPTURE(ch.recipe);
    const std::string policy = dir.file(std::string(ch.recipe) + ".safetensors");
    test::train_ref_policy(cap, policy, ch.recipe, ch.hidden);

    export_params ep;
    if (ch.key) {  // the key-feature variant of the learned-eviction template
      ep.recipe_path = dir.file("learned-key.json");
      test::write_bytes(ep.recipe_path, R"({"name": "learned-key", "layer": {"k": "none",
          "v": "none", "policy": {"learned": {"features": "key"}}}, "budget": {"retain": 0.125}})");
    } else {
      ep.template_name = "learned-eviction";
    }
    ep.model_dir = ref_model();
    ep.policy = policy;
    ep.out = dir.file(std::string(ch.recipe) + "-preset.safetensors");
    ep.context = seq_len;
    const export_result ex = export_preset(ep);
    REQUIRE(ex.recipe.layers[0].policy.kind == token_policy_kind::learned);
    CHECK(ex.recipe.layers[0].policy.learned.mlp_hidden == ch.hidden);

    // Prefill 48, decode to 64: budget floor(0.125 x 64) = 8 tokens per head.
    runtime_cache rc(cfg, ep.out, 1);
    m.forward(ids.narrow(1, 0, 48), rc);
    at::Tensor logits;
    for (std::int64_t t = 48; t < seq_len; ++t) logits = m.forward(ids.narrow(1, t, 1), rc);
    CHECK(logits.isfinite().all().item<bool>());

    const safetensors_file pf(policy);
    double max_err = 0;
    std::int64_t compared = 0;
    for (int l = 0; l < L; ++l) {
      const evicting_layer* ev = rc.row(0).eviction(l);
      REQUIRE(ev != nullptr);
      const std::int64_t in = ch.key ? d : cfg.hidden_size;
      const std::int64_t row_elems = cr.row_elems(l, ch.key ? "k" : "hidden");
      std::vector<float> feat(sz(seq_len * row_elems));
      cr.read_rows(l, ch.key ? "k" : "hidden", 0, seq_len, feat.data());
      for (int h = 0; h < H; ++h) {
        const std::vector<std::int64_t> pos = ev->positions(h);
        const std::vector<double> got = ev->scores(h);
        REQUIRE(pos.size() == 8);
        REQUIRE(got.size() == pos.size());
        at::Tensor x = at::empty({static_cast<std::int64_t>(pos.size()), in}, at::kFloat);
        for (std::size_t j = 0; j < pos.size(); ++j) {
          const float* src = feat.data() + sz(pos[j]) * sz(row_elems) + (ch.key ? sz(h * d) : 0);
          std::copy(src, src + in, x[static_cast<std::int64_t>(j)].data_ptr<float>());
        }
        const at::Tensor want = libtorch_scores(pf, l, x).select(1, h).to(at::kDouble);
        for (std::size_t j = 0; j < pos.size(); ++j) {
          // The capture attended every token; the runtime's decode steps attend only what layers
          // below kept, so their features past layer 0 differ. Prefill tokens' features were
          // computed before the first eviction: equal in every layer.
          if (l > 0 && pos[j] >= 48) continue;
          const double w = want[static_cast<std::int64_t>(j)].item<double>();
          max_err = std::max(max_err, std::fabs(got[j] - w) / (1.0 + std::fabs(w)));
          ++compared;
        }
      }
    }
    // Two fp32 forwards of the same tokens (capture batch 4, runtime batch 1) feed the scorer.
    CHECK(compared >= L * H * 4);
    CHECK(max_err < 1e-3);
    MESSAGE(std::string(ch.recipe) << ": " << compared << " held tokens, max relative score "
                                   << "difference runtime vs libtorch " << max_err);
  }
}

TEST_CASE("attention entropy: hand values; head budgets split by entropy keep the layer total") {
  const std::vector<float> uniform(10, 3.0f), one_hot = {0, 0, 5, 0};
  CHECK(cumulative_attention_entropy(uniform.data(), 10) == doctest::Approx(std::log(10.0)));
  CHECK(cumulative_attention_entropy(one_hot.data(), 4) == 0.0);
  const std::vector<float> two = {1, 9, 3, 1};  // stride 2: {1, 3}
  CHECK(cumulative_attention_entropy(two.data(), 2, 2) ==
        doctest::Approx(-(0.25 * std::log(0.25) + 0.75 * std::log(0.75))));

  preset_recipe r;
  r.name = "t";
  r.model.model_type = "llama";
  r.model.n_layers = 3;
  r.model.n_kv_heads = 2;
  r.model.head_dim = 8;
  r.model.config_sha256 = std::string(64, '0');
  r.layers.resize(3);
  r.layers[0].policy.kind = token_policy_kind::h2o;
  r.layers[0].budget.kind = budget_kind::retain;
  r.layers[0].budget.retain = 0.2;
  r.layers[1].policy.kind = token_policy_kind::lru;
  r.layers[1].budget.kind = budget_kind::tokens;
  r.layers[1].budget.tokens = 100;
  r.layers[2].policy.kind = token_policy_kind::window;  // takes no budget: left alone
  r.layers[2].policy.recent = 16;
  head_entropy e;
  e.entropy = {{1.0, 3.0}, {2.0, 2.0}, {1.0, 2.0}};
  preset_recipe a = r;
  split_head_budgets(a, e, head_budget_rule::entropy, "cap");
  REQUIRE(a.layers[0].head_budgets.size() == 2);
  CHECK(a.layers[0].head_budgets[0].retain == doctest::Approx(0.2 * 2 * 1 / 4));
  CHECK(a.layers[0].head_budgets[1].retain == doctest::Approx(0.2 * 2 * 3 / 4));
  CHECK(a.layers[1].head_budgets[0].tokens == 100);
  CHECK(a.layers[1].head_budgets[1].tokens == 100);
  CHECK(a.layers[2].head_budgets.empty());
  preset_recipe b = r;
  split_head_budgets(b, e, head_budget_rule::effective, "cap");
  const double e1 = std::exp(1.0), e3 = std::exp(3.0);
  CHECK(b.layers[0].head_budgets[0].retain == doctest::Approx(0.4 * e1 / (e1 + e3)));
  CHECK(b.layers[0].head_budgets[1].retain == doctest::Approx(0.4 * e3 / (e1 + e3)));
  // Bytes: the split keeps the layer's tokens (up to flooring), so the ratio hardly moves.
  CHECK(account_bytes(a, 1000).layers[0].retained == doctest::Approx(200).epsilon(0.01));
  head_entropy missing = e;
  missing.entropy[1].clear();
  CHECK_THROWS_WITH_AS(split_head_budgets(r, missing, head_budget_rule::entropy, "cap.h5"),
                       doctest::Contains("cap.h5: layer 1 has no attention statistics"),
                       kvcal::error);
}

TEST_CASE("export --head-budgets on a kvcal-ref-v1 capture: entropies match a naive recount") {
  if (!have_ref()) {
    MESSAGE("data/models/kvcal-ref-v1 absent: skipped");
    return;
  }
  set_log_level(log_level::error);
  test::scratch_dir dir;
  const std::string cap = test::tiny_ref_capture(dir);
  capture_reader cr(cap);
  const head_entropy e = attention_entropy(cr);
  const int L = static_cast<int>(cr.header().n_layers),
            H = static_cast<int>(cr.header().n_kv_heads);
  REQUIRE(e.sequences == 4);
  // Naive: per sequence of 64 rows, -sum p ln p of attn_cum / 64 (it sums to 64: every query's
  // attention is a distribution), averaged.
  for (int l = 0; l < L; ++l) {
    std::vector<float> cum(sz(4 * seq_len * H));
    cr.read_rows(l, "attn_cum", 0, 4 * seq_len, cum.data());
    for (int h = 0; h < H; ++h) {
      double mean = 0;
      for (int s = 0; s < 4; ++s) {
        double total = 0, ent = 0;
        for (std::int64_t j = 0; j < seq_len; ++j) total += cum[sz((s * seq_len + j) * H + h)];
        CHECK(total == doctest::Approx(double(seq_len)).epsilon(1e-4));
        for (std::int64_t j = 0; j < seq_len; ++j) {
          const double p = cum[sz((s * seq_len + j) * H + h)] / total;
          if (p > 0) ent -= p * std::log(p);
        }
        mean += ent / 4;
      }
      CHECK(e.entropy[sz(l)][sz(h)] == doctest::Approx(mean).epsilon(1e-9));
    }
  }
  export_params p;
  p.template_name = "h2o";
  p.model_dir = ref_model();
  p.out = dir.file("h2o-heads.safetensors");
  p.context = 2048;
  p.head_budgets = "entropy";
  p.capture = cap;
  p.match_ratio = 8;
  const export_result ex = export_preset(p);
  CHECK(account_bytes(ex.recipe, 2048).ratio() >= 8.0);
  for (int l = 0; l < L; ++l) {
    const auto& hb = ex.recipe.layers[sz(l)].head_budgets;
    REQUIRE(hb.size() == sz(H));
    const std::vector<double> w = head_budget_weights(e.entropy[sz(l)], head_budget_rule::entropy);
    // Proportions follow the entropies (both scaled by the same --match-ratio factor).
    CHECK(hb[0].retain / hb[1].retain == doctest::Approx(w[0] / w[1]).epsilon(1e-9));
  }
  // The preset runs: every head holds its own budget.
  const llama_model m = llama_model::load(ref_model(), at::kCPU, at::kFloat);
  runtime_cache rc(m.config(), p.out, 1);
  const std::vector<std::int32_t> ids32 = cr.read_tokens("ids", 0, seq_len);
  std::vector<std::int64_t> ids64(ids32.begin(), ids32.end());
  m.forward(at::tensor(ids64, at::TensorOptions().dtype(at::kLong)).unsqueeze(0), rc);
  for (int l = 0; l < L; ++l)
    for (int h = 0; h < H; ++h) {
      const token_budget& b = ex.recipe.layers[sz(l)].head_budgets[sz(h)];
      const auto want = std::min<std::int64_t>(
          seq_len, std::max<std::int64_t>(
                       1, static_cast<std::int64_t>(std::floor(b.retain * double(seq_len)))));
      CHECK(rc.row(0).eviction(l)->held(h) == want);
    }
  CHECK(double(rc.stats().bytes_used) == account_bytes(ex.recipe, seq_len).total());
}
