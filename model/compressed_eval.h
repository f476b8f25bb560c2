// Quality through a compressed KV cache (DESIGN.md §3.4; protocol in docs/eval.md): perplexity
// by *decoding through* the cache, and retrieval accuracy, each side by side with the plain
// full-precision cache run under the same protocol in the same process.
//
// Decode-PPL of one window of n tokens with prefill P (1 <= P < n):
//   cache.reset(); logits = forward(tokens[0..P), last)        -> scores token P
//   for t in P .. n-2: logits = forward(tokens[t])              -> scores token t+1
// so the n-P scored tokens are all predicted by attending the cache as the preset stores it
// (quantized groups, PCA latents, evicted tokens: everything the decode steps really see).
// PPL = exp(mean NLL) over the scored tokens of every window (fp64 sums).
//
//   kvcal::compressed_eval_params p;
//   p.base.model_dir = "data/models/kvcal-ref-v1"; p.base.text_path = "data/eval.txt";
//   p.presets = {"kivi-2.safetensors"}; p.tasks = {"passkey"};
//   kvcal::compressed_eval_result r = kvcal::run_compressed_eval(p);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/kv_cache.h"
#include "model/llama.h"
#include "model/perplexity.h"
#include "model/runtime_cache.h"

namespace kvcal {

struct decode_ppl_options {
  std::int64_t context = 0;     // window; 0 = default_context(config)
  std::int64_t prefill = 0;     // tokens prefilled per window; 0 = context / 2
  std::int64_t max_tokens = 0;  // first N tokens of the stream; 0 = all
  bool show_progress = true;
  std::string label = "eval";
};

struct decode_ppl_result {
  double ppl = 0, mean_nll = 0;
  std::int64_t tokens = 0, predicted = 0, windows = 0, context = 0, prefill = 0;
  double seconds = 0;
  // The cache's own accounting at the end of the longest window (runtime caches only).
  bool has_stats = false;
  std::size_t bytes_held = 0;  // pages as allocated
  double fp16_bytes = 0;       // the same tokens as fp16 K+V
  std::size_t fixed_bytes = 0;
  std::int64_t cached_tokens = 0;
  // Per layer: relative error of the cache's attention output against exact attention over the
  // same inputs (model/attention_error_probe.h), over every attend call of the run. Presets only.
  std::vector<double> attn_rel_error;
  double ratio() const { return bytes_held ? fp16_bytes / static_cast<double>(bytes_held) : 0; }
};

// Runs the protocol above on `cache` (reset per window). With maybe_stats (the same object as
// `cache`), records its stats at the end of the longest window.
decode_ppl_result decode_perplexity(const llama_model& model, const std::vector<std::int32_t>& ids,
                                    kv_cache& cache, const decode_ppl_options& opt,
                                    runtime_cache* maybe_stats = nullptr);

struct compressed_eval_params {
  eval_params base;                     // model, text, device, dtype, context, max_tokens, json_out
  std::vector<std::string> presets;     // none: baseline only
  std::int64_t prefill = 0;             // 0 = context / 2
  std::vector<std::string> tasks;       // "passkey", "recall"
  std::vector<std::string> task_files;  // explicit files (task name = file stem up to '_')
  std::string tasks_dir;                // default: data/tasks beside the model folder's data/ root
  std::vector<std::int64_t> task_lengths;  // empty = all
  std::int64_t task_limit = 0;             // per task and length; 0 = all
  bool skip_ppl = false;
  // Presets through the CUDA kernels (model/gpu_packed_cache.h) instead of the CPU runtime: needs
  // a CUDA device and presets the kernels run (runtime/packed_support.h); no per-layer attention
  // error probe; bytes are the GPU cache's at the end of the last window.
  bool gpu_kernels = false;
};

// Accuracy of one (task, length, depth) cell; correct[0] = baseline, correct[1 + i] = preset i.
struct task_cell {
  std::string task;
  std::int64_t length = 0;
  double depth = 0;
  std::int64_t n = 0;
  std::vector<std::int64_t> correct;
};

struct preset_summary {
  std::string path, name;
  decode_ppl_result ppl;
};

struct compressed_eval_result {
  std::string model_dir, text_path, device, dtype;
  // --gpu-kernels: the presets ran through the GPU cache, whose bytes held are its live bytes
  // (records in use + fp16 rows of the rest), where the CPU runtime reports its pages held.
  bool gpu_kernels = false;
  bool has_ppl = false;
  decode_ppl_result baseline;
  std::vector<preset_summary> presets;
  std::vector<task_cell> cells;  // by task, length, depth
  std::int64_t task_instances = 0;
  double task_seconds = 0;
  // Accuracy of column c (0 = baseline) over the cells of `task` (and `length` if > 0).
  double accuracy(const std::string& task, std::size_t column, std::int64_t length = 0) const;
};

// What `kvcal eval --preset/--tasks` does: load the model and tokenizer, check every preset's
// model fingerprint against the model (error names both files), run decode-PPL for the baseline
// and each preset, then the retrieval tasks; with json_out, write the figures atomically.
compressed_eval_result run_compressed_eval(const compressed_eval_params& p);
std::string compressed_eval_json(const compressed_eval_result& r);
// The human-readable report (tables) the CLI prints.
std::string compressed_eval_report(const compressed_eval_result& r);

}  // namespace kvcal
