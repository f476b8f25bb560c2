#include "model/perplexity.h"

#include <chrono>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kernels/common/error.h"
#include "kernels/common/progress.h"
#include "model/full_cache.h"
#include "model/tokenizer.h"
#include "model/torch_util.h"
#include "runtime/io/atomic_file.h"

namespace kvcal {

std::int64_t default_context(const model_config& cfg) {
  const std::int64_t mpe = cfg.max_position_embeddings > 0 ? cfg.max_position_embeddings : 2048;
  return std::min<std::int64_t>(mpe, 2048);
}

perplexity_result perplexity(const llama_model& model, const std::vector<std::int32_t>& ids_in,
                             const perplexity_options& opt) {
  KVCAL_CHECK(opt.context >= 0, "perplexity: context must be >= 0, got ", opt.context);
  KVCAL_CHECK(opt.max_tokens >= 0, "perplexity: max_tokens must be >= 0, got ", opt.max_tokens);
  const std::int64_t ctx = opt.context > 0 ? opt.context : default_context(model.config());
  KVCAL_CHECK(ctx >= 2, "perplexity: context must be >= 2 tokens, got ", ctx);
  std::int64_t n = static_cast<std::int64_t>(ids_in.size());
  if (opt.max_tokens > 0) n = std::min(n, opt.max_tokens);
  KVCAL_CHECK(n >= 2, "perplexity: need at least 2 tokens, the text has ", n);

  perplexity_result r;
  r.context = ctx;
  r.tokens = n;
  std::int64_t to_predict = 0;
  for (std::int64_t s = 0; s < n; s += ctx) {
    const std::int64_t len = std::min(ctx, n - s);
    if (len >= 2) to_predict += len - 1;
  }
  at::Tensor all = at::empty({n}, at::TensorOptions().dtype(at::kLong));
  auto* p = all.data_ptr<std::int64_t>();
  for (std::int64_t i = 0; i < n; ++i) p[i] = ids_in[static_cast<std::size_t>(i)];

  const auto t0 = std::chrono::steady_clock::now();
  full_cache cache(model.config(), 1, model.device(), model.dtype(), ctx);
  std::unique_ptr<progress> bar;
  if (opt.show_progress) bar = std::make_unique<progress>("eval", to_predict, "tok");
  double nll_sum = 0.0;
  for (std::int64_t s = 0; s < n; s += ctx) {
    const std::int64_t len = std::min(ctx, n - s);
    if (len < 2) break;  // a last window of one token predicts nothing
    cache.reset();
    at::Tensor window = all.narrow(0, s, len).to(model.device());   // [len]
    at::Tensor logits = model.forward(window.unsqueeze(0), cache);  // [1, len, V] fp32
    at::Tensor pred = logits[0].narrow(0, 0, len - 1);              // [len - 1, V]
    at::Tensor target = window.narrow(0, 1, len - 1).unsqueeze(1);  // [len - 1, 1]
    // NLL = logsumexp(logits) - logit[target], without materializing log-probabilities.
    at::Tensor nll = at::logsumexp(pred, -1) - pred.gather(1, target).squeeze(1);
    nll_sum += nll.to(at::kDouble).sum().item<double>();
    r.predicted += len - 1;
    ++r.windows;
    if (bar) bar->advance(static_cast<std::uint64_t>(len - 1));
  }
  if (bar) bar->finish();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.mean_nll = nll_sum / static_cast<double>(r.predicted);
  r.ppl = std::exp(r.mean_nll);
  return r;
}

eval_result run_eval(const eval_params& p) {
  const at::Device device = parse_device(p.device);
  const at::ScalarType dtype = p.dtype.empty() ? (device.is_cuda() ? at::kBFloat16 : at::kFloat)
                                               : parse_compute_dtype(p.dtype);
  std::ifstream f(p.text_path, std::ios::binary);
  KVCAL_CHECK(f.good(), p.text_path, ": cannot open the text file");
  std::ostringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();

  const std::string config_path = p.model_dir + "/config.json";
  KVCAL_CHECK(std::ifstream(config_path).good(), config_path,
              ": not found (is this a Hugging Face model folder?)");
  const std::string tok_path = p.model_dir + "/tokenizer.json";
  KVCAL_CHECK(std::ifstream(tok_path).good(), tok_path,
              ": not found (the model folder needs its tokenizer)");
  const tokenizer tok = tokenizer::load(tok_path);
  const llama_model model = llama_model::load(p.model_dir, device, dtype);
  const std::vector<std::int32_t> ids = tok.encode(text, /*add_special_tokens=*/true);
  for (std::int32_t id : ids)
    KVCAL_CHECK(id >= 0 && id < model.config().vocab_size, tok_path, ": token id ", id,
                " is outside the model's vocabulary (", model.config().vocab_size, ")");

  eval_result r;
  perplexity_options o;
  o.context = p.context;
  o.max_tokens = p.max_tokens;
  o.show_progress = p.show_progress;
  r.ppl = perplexity(model, ids, o);
  r.model_dir = p.model_dir;
  r.text_path = p.text_path;
  r.device = device.str();
  r.dtype = compute_dtype_name(dtype);
  r.text_bytes = static_cast<std::int64_t>(text.size());
  r.bos_added = !tok.special_prefix().empty();
  if (!p.json_out.empty()) write_file_atomic(p.json_out, eval_json(r) + "\n");
  return r;
}

std::string eval_json(const eval_result& r) {
  nlohmann::json j;
  j["model"] = r.model_dir;
  j["text"] = r.text_path;
  j["text_bytes"] = r.text_bytes;
  j["device"] = r.device;
  j["dtype"] = r.dtype;
  j["cache"] = "full";
  j["bos_added"] = r.bos_added;
  j["context"] = r.ppl.context;
  j["tokens"] = r.ppl.tokens;
  j["predicted_tokens"] = r.ppl.predicted;
  j["windows"] = r.ppl.windows;
  j["mean_nll"] = r.ppl.mean_nll;
  j["ppl"] = r.ppl.ppl;
  j["seconds"] = r.ppl.seconds;
  return j.dump(2);
}

}  // namespace kvcal
