// Baseline perplexity of a model over a text (the `kvcal eval` convention, docs/eval.md):
//   - the text is tokenized as ONE stream with the tokenizer's post-processor (so BOS appears
//     once, at the start, only if the post-processor adds one; likewise any suffix);
//   - the stream is cut into non-overlapping windows of `context` tokens (default: the model's
//     max_position_embeddings capped at 2048); a last window shorter than 2 tokens is dropped;
//   - each window starts a fresh cache; inside a window token i+1 is predicted from tokens 0..i;
//   - PPL = exp(mean NLL over every predicted token of every window), NLL summed in fp64.
//
//   auto m = kvcal::llama_model::load(dir, at::kCPU, at::kFloat);
//   kvcal::perplexity_result r = kvcal::perplexity(m, ids, {/*context=*/512});
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/llama.h"

namespace kvcal {

struct perplexity_options {
  std::int64_t context = 0;     // window length in tokens; 0 = default_context(model config)
  std::int64_t max_tokens = 0;  // evaluate only the first N tokens of the stream; 0 = all
  bool show_progress = true;
};

struct perplexity_result {
  double ppl = 0.0;
  double mean_nll = 0.0;       // nats per predicted token
  std::int64_t tokens = 0;     // stream tokens evaluated (after max_tokens)
  std::int64_t predicted = 0;  // tokens scored (= tokens - windows when none is dropped)
  std::int64_t windows = 0;
  std::int64_t context = 0;  // window length used
  double seconds = 0.0;
};

// min(max_position_embeddings, 2048) (2048 when the config gives none).
std::int64_t default_context(const model_config& cfg);

// PPL of the token stream `ids` (already tokenized, post-processor applied).
perplexity_result perplexity(const llama_model& model, const std::vector<std::int32_t>& ids,
                             const perplexity_options& opt = {});

// What `kvcal eval` does: load model + tokenizer from `model_dir`, read the text, tokenize,
// perplexity, and (with json_out) write the figures atomically.
struct eval_params {
  std::string model_dir;
  std::string text_path;
  std::string device = "cpu";
  std::string dtype;  // "" = fp32 on CPU, bf16 on CUDA
  std::int64_t context = 0;
  std::int64_t max_tokens = 0;
  std::string json_out;
  bool show_progress = true;
};

struct eval_result {
  perplexity_result ppl;
  std::string model_dir, text_path, device, dtype;
  std::int64_t text_bytes = 0;
  bool bos_added = false;  // the post-processor put a BOS in front of the stream
};

eval_result run_eval(const eval_params& p);
// The JSON object `--json` writes.
std::string eval_json(const eval_result& r);

}  // namespace kvcal
