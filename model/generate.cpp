#include "model/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <numeric>

#include "kernels/common/error.h"
#include "model/full_cache.h"
#include "model/runtime_cache.h"
#include "model/tokenizer.h"
#include "model/torch_util.h"
#include "runtime/preset.h"

namespace kvcal {

std::int32_t sample_token(const at::Tensor& logits, const sampling_options& s,
                          std::mt19937_64& rng) {
  at::Tensor l = logits.to(at::kCPU, at::kFloat).contiguous();  // [V]
  if (s.greedy) return static_cast<std::int32_t>(l.argmax().item<std::int64_t>());
  KVCAL_CHECK(s.temperature > 0, "--temperature must be > 0, got ", s.temperature);
  KVCAL_CHECK(s.top_p > 0 && s.top_p <= 1, "--top-p must be in (0, 1], got ", s.top_p);
  const float* x = l.data_ptr<float>();
  const auto V = static_cast<std::size_t>(l.numel());
  // Softmax in fp64 at temperature T, then the smallest set of most likely tokens whose mass
  // reaches top_p (ties broken by id, so a seed always gives the same text).
  const double mx = *std::max_element(x, x + V);
  std::vector<double> p(V);
  double sum = 0;
  for (std::size_t i = 0; i < V; ++i) sum += p[i] = std::exp((x[i] - mx) / s.temperature);
  std::vector<std::int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) {
    return p[static_cast<std::size_t>(a)] > p[static_cast<std::size_t>(b)];
  });
  std::size_t keep = 0;
  double mass = 0;
  while (keep < V && (keep == 0 || mass < s.top_p * sum))
    mass += p[static_cast<std::size_t>(order[keep++])];
  std::uniform_real_distribution<double> u(0.0, mass);
  double r = u(rng);
  for (std::size_t i = 0; i < keep; ++i) {
    r -= p[static_cast<std::size_t>(order[i])];
    if (r <= 0) return order[i];
  }
  return order[keep - 1];
}

std::vector<std::int32_t> generate_tokens(const llama_model& model, kv_cache& cache,
                                          const std::vector<std::int32_t>& prompt_ids,
                                          std::int64_t max_new, const sampling_options& s,
                                          std::int32_t maybe_eos,
                                          const std::function<void(std::int32_t)>& on_token) {
  KVCAL_CHECK(!prompt_ids.empty(), "generate: empty prompt");
  KVCAL_CHECK(max_new >= 0, "generate: max_new must be >= 0");
  const auto n = static_cast<std::int64_t>(prompt_ids.size());
  const std::int64_t mpe = model.config().max_position_embeddings;
  KVCAL_CHECK(mpe <= 0 || n + max_new <= mpe, "generate: prompt of ", n, " tokens + ", max_new,
              " new ones exceeds the model's context (", mpe, ")");
  cache.reset();
  std::mt19937_64 rng(s.seed);
  at::Tensor ids = at::empty({1, n}, at::TensorOptions().dtype(at::kLong));  // [1, n]
  auto* p = ids.data_ptr<std::int64_t>();
  for (std::int64_t i = 0; i < n; ++i) p[i] = prompt_ids[static_cast<std::size_t>(i)];
  forward_options last;
  last.logits = logits_mode::last;
  std::vector<std::int32_t> out;
  if (max_new == 0) return out;
  at::Tensor logits = model.forward(ids.to(model.device()), cache, last);  // [1, 1, V]
  for (std::int64_t t = 0; t < max_new; ++t) {
    const std::int32_t next = sample_token(logits[0][0], s, rng);
    out.push_back(next);
    if (on_token) on_token(next);
    if (next == maybe_eos || t + 1 == max_new) break;
    at::Tensor step = at::full({1, 1}, next, at::TensorOptions().dtype(at::kLong));
    logits = model.forward(step.to(model.device()), cache, last);
  }
  return out;
}

namespace {

// Length of the longest prefix of `s` that ends on a UTF-8 character boundary.
std::size_t complete_utf8(const std::string& s) {
  std::size_t i = s.size(), back = 0;
  while (i > 0 && back < 4 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) {
    --i;
    ++back;
  }
  if (i == 0) return s.size();
  const auto lead = static_cast<unsigned char>(s[i - 1]);
  std::size_t need = lead < 0x80           ? 1
                     : (lead >> 5) == 0x6  ? 2
                     : (lead >> 4) == 0xE  ? 3
                     : (lead >> 3) == 0x1E ? 4
                                           : 1;
  return back + 1 >= need ? s.size() : i - 1;
}

}  // namespace

generate_result run_generate(const generate_params& p, std::ostream& out) {
  const at::Device device = parse_device(p.device);
  const at::ScalarType dtype = p.dtype.empty() ? (device.is_cuda() ? at::kBFloat16 : at::kFloat)
                                               : parse_compute_dtype(p.dtype);
  const std::string config_path = p.model_dir + "/config.json";
  KVCAL_CHECK(std::ifstream(config_path).good(), config_path,
              ": not found (is this a Hugging Face model folder?)");
  const std::string tok_path = p.model_dir + "/tokenizer.json";
  KVCAL_CHECK(std::ifstream(tok_path).good(), tok_path,
              ": not found (the model folder needs its tokenizer)");
  KVCAL_CHECK(!p.prompt.empty(), "generate: empty prompt");
  const model_config cfg = read_model_config(config_path);
  if (!p.preset.empty()) {
    preset_file f(p.preset);
    check_fingerprint(f.recipe().model, cfg, p.preset, config_path);  // names both files
  }
  const tokenizer tok = tokenizer::load(tok_path);
  const llama_model model = llama_model::load(p.model_dir, cfg, device, dtype);

  generate_result r;
  r.prompt_ids = tok.encode(p.prompt, /*add_special_tokens=*/true);
  const std::int64_t total = static_cast<std::int64_t>(r.prompt_ids.size()) + p.max_new;
  std::unique_ptr<kv_cache> cache;
  runtime_cache* rc = nullptr;
  if (p.preset.empty()) {
    cache = std::make_unique<full_cache>(cfg, 1, device, dtype, total);
  } else {
    auto c = std::make_unique<runtime_cache>(cfg, p.preset, 1);
    c->reserve(total, static_cast<std::int64_t>(r.prompt_ids.size()));
    rc = c.get();
    cache = std::move(c);
  }
  const std::int32_t eos = tok.eos_id().value_or(-1);
  const auto t0 = std::chrono::steady_clock::now();
  auto t_first = t0;
  std::size_t shown = 0;
  std::string text;
  std::vector<std::int32_t> so_far;
  r.new_ids = generate_tokens(model, *cache, r.prompt_ids, p.max_new, p.sampling, eos,
                              [&](std::int32_t id) {
                                if (so_far.empty()) t_first = std::chrono::steady_clock::now();
                                so_far.push_back(id);
                                // Decode the whole continuation: byte-level BPE pieces may split
                                // a character; print only complete UTF-8.
                                text = tok.decode(so_far, /*skip_special_tokens=*/true);
                                const std::size_t ok = complete_utf8(text);
                                if (ok > shown) {
                                  out << text.substr(shown, ok - shown) << std::flush;
                                  shown = ok;
                                }
                              });
  const auto t1 = std::chrono::steady_clock::now();
  if (shown < text.size()) out << text.substr(shown) << std::flush;
  r.text = text;
  r.stopped_at_eos = !r.new_ids.empty() && r.new_ids.back() == eos;
  r.prefill_seconds = std::chrono::duration<double>(t_first - t0).count();
  r.decode_seconds = std::chrono::duration<double>(t1 - t_first).count();
  const double all = std::chrono::duration<double>(t1 - t0).count();
  r.tokens_per_second = all > 0 ? static_cast<double>(r.new_ids.size()) / all : 0;
  if (rc) {
    const cache_stats st = rc->stats();
    r.has_stats = true;
    r.bytes_held = st.bytes_held;
    r.fp16_bytes = st.fp16_bytes;
    r.cached_tokens = st.tokens.empty() ? 0 : st.tokens.back();
  } else {
    r.cached_tokens = cache->length();
    r.fp16_bytes =
        static_cast<double>(r.cached_tokens) * static_cast<double>(cfg.num_hidden_layers) *
        static_cast<double>(cfg.num_key_value_heads) * static_cast<double>(cfg.head_dim) * 4.0;
  }
  return r;
}

}  // namespace kvcal
