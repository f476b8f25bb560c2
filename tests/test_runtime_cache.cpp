// model/runtime_cache: the Llama-family forward through the compressed runtime cache, on the
// transformers fixtures — an fp16 preset gives the plain cache's logits (up to fp16 storage of
// K/V), compressed presets really compress what later steps attend, batch rows are independent,
// and a preset for another model is refused.
#include <cmath>
#include <map>

#include "kernels/common/error.h"
#include "model/full_cache.h"
#include "model/llama.h"
#include "model/runtime_cache.h"
#include "runtime/byte_accounting.h"
#include "runtime/preset.h"
#include "runtime/preset_recipe.h"
#include "tests/test_recipes.h"
#include "tests/torch_doctest.h"

using namespace kvcal;

namespace {

std::string fixture_dir(const std::string& name) {
  return std::string(KVCAL_SOURCE_DIR) + "/tests/fixtures/hf/" + name;
}

const llama_model& model_of(const std::string& name) {
  static std::map<std::string, llama_model> cache;
  auto it = cache.find(name);
  if (it == cache.end())
    it = cache.emplace(name, llama_model::load(fixture_dir(name), at::kCPU, at::kFloat)).first;
  return it->second;
}

using test::quant;
using test::recipe_for;

// Prefill 16 tokens, then 8 single-token steps; logits [24, vocab].
at::Tensor run(const llama_model& m, kv_cache& cache, const at::Tensor& ids) {
  std::vector<at::Tensor> parts;
  parts.push_back(m.forward(ids.narrow(1, 0, 16), cache));
  for (int t = 16; t < ids.size(1); ++t) parts.push_back(m.forward(ids.narrow(1, t, 1), cache));
  return at::cat(parts, 1)[0];
}

at::Tensor ids_for(const model_config& cfg, std::int64_t batch) {
  at::Tensor g = at::arange(batch * 24, at::TensorOptions().dtype(at::kLong)).reshape({batch, 24});
  return (g * 7 + 3).remainder(cfg.vocab_size);
}

}  // namespace

TEST_CASE("fp16 preset: the plain cache's logits up to fp16 K/V storage, every fixture") {
  for (const std::string name : {"llama", "llama3-rope", "qwen2", "mistral", "llama-headdim"}) {
    CAPTURE(name);
    const llama_model& m = model_of(name);
    const model_config& cfg = m.config();
    at::Tensor ids = ids_for(cfg, 1);
    full_cache plain(cfg, 1, at::kCPU, at::kFloat);
    at::Tensor want = run(m, plain, ids);
    runtime_cache rc(cfg, recipe_for(cfg, kv_method{}, kv_method{}, 0), {}, 1);
    at::Tensor got = run(m, rc, ids);
    CHECK(rc.length() == 24);
    const double diff = (got - want).abs().max().item<double>();
    const double scale = want.abs().max().item<double>();
    MESSAGE(name, ": max |logit diff| ", diff, " (max |logit| ", scale, ")");
    CHECK(diff <= 2e-3 * std::max(1.0, scale));
  }
}

TEST_CASE("a compressed preset compresses what later steps attend; rows are independent") {
  const llama_model& m = model_of("llama");
  const model_config& cfg = m.config();
  const int d = static_cast<int>(cfg.head_dim);
  auto r =
      recipe_for(cfg, quant(4, 4, quant_axis::per_channel), quant(4, d, quant_axis::per_token), 4);
  cache_options opt;
  opt.page_tokens = 4;
  at::Tensor ids = ids_for(cfg, 2);
  runtime_cache two(cfg, r, {}, 2, opt);
  two.reserve(24, 16);
  std::vector<at::Tensor> parts;
  parts.push_back(m.forward(ids.narrow(1, 0, 16), two));
  for (int t = 16; t < 24; ++t) parts.push_back(m.forward(ids.narrow(1, t, 1), two));
  at::Tensor both = at::cat(parts, 1);  // [2, 24, vocab]
  const cache_stats st = two.stats();
  CHECK(st.compressed[static_cast<int>(kv_method_kind::quant)].tokens ==
        2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (20 + 20));  // 2 rows, K and V
  CHECK(static_cast<double>(st.bytes_used) == 2 * account_bytes(r, 24).total());
  CHECK(static_cast<double>(st.bytes_used) < st.fp16_bytes);
  // Row 1 alone gives the same logits.
  runtime_cache one(cfg, r, {}, 1, opt);
  at::Tensor alone = run(m, one, ids.narrow(0, 1, 1));
  CHECK((both[1] - alone).abs().max().item<double>() <= 1e-5);
  // Compression changes the logits, but not wildly (4-bit).
  full_cache plain(cfg, 1, at::kCPU, at::kFloat);
  at::Tensor ref = run(m, plain, ids.narrow(0, 1, 1));
  const double diff = (alone - ref).abs().max().item<double>();
  MESSAGE("4-bit KIVI-style, residual 4: max |logit diff| vs plain cache ", diff);
  CHECK(diff > 0);
  CHECK(std::isfinite(diff));
}

TEST_CASE("a preset for another model is refused naming the field") {
  const llama_model& m = model_of("llama");
  auto r = recipe_for(m.config(), kv_method{}, kv_method{}, 0);
  r.model.n_kv_heads = 4;
  try {
    runtime_cache rc(m.config(), r, {}, 1);
    FAIL("no error");
  } catch (const kvcal::error& e) {
    CHECK(std::string(e.what()).find("n_kv_heads") != std::string::npos);
  }
}
