// `kvcal generate`: text generation through the plain cache or a compressed one (a preset).
// The prompt is tokenized with the tokenizer's post-processor (BOS where it adds one), prefilled
// in one forward, then one token per step; each new piece of text is written to `out` as soon as
// it forms complete UTF-8. Greedy = argmax; otherwise temperature + nucleus (top-p) sampling
// with a seeded generator (same seed, same text). Stops at EOS or after max_new tokens.
//
//   kvcal::generate_params p;
//   p.model_dir = "data/models/kvcal-ref-v1"; p.prompt = "In the beginning"; p.preset =
//   "kivi-2.safetensors"; kvcal::generate_result r = kvcal::run_generate(p, std::cout);
#pragma once

#include <cstdint>
#include <functional>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "model/kv_cache.h"
#include "model/llama.h"

namespace kvcal {

struct sampling_options {
  bool greedy = true;
  double temperature = 1.0;
  double top_p = 1.0;
  std::uint64_t seed = 0;
};

// Picks the next token from logits [V] (fp32, CPU or device).
std::int32_t sample_token(const at::Tensor& logits, const sampling_options& s,
                          std::mt19937_64& rng);

struct generate_params {
  std::string model_dir;
  std::string preset;  // "" = plain full-precision cache
  std::string prompt;
  std::string device = "cpu";
  std::string dtype;  // "" = fp32 on CPU, bf16 on CUDA
  std::int64_t max_new = 64;
  sampling_options sampling;
};

struct generate_result {
  std::vector<std::int32_t> prompt_ids, new_ids;
  std::string text;  // the decoded new tokens
  double prefill_seconds = 0, decode_seconds = 0;
  double tokens_per_second = 0;  // new tokens / (prefill + decode time)
  bool has_stats = false;        // a compressed cache: its accounting at the end
  std::size_t bytes_held = 0;
  double fp16_bytes = 0;
  std::int64_t cached_tokens = 0;
  bool stopped_at_eos = false;
};

// The token loop on an already built model and cache (reset first); on_token sees each new id.
std::vector<std::int32_t> generate_tokens(const llama_model& model, kv_cache& cache,
                                          const std::vector<std::int32_t>& prompt_ids,
                                          std::int64_t max_new, const sampling_options& s,
                                          std::int32_t maybe_eos = -1,
                                          const std::function<void(std::int32_t)>& on_token = {});

generate_result run_generate(const generate_params& p, std::ostream& out);

}  // namespace kvcal
