// Retrieval tasks through a KV cache (DESIGN.md §3.4: eviction damage hides in PPL and shows in
// retrieval). A task file is JSON lines as data/tasks.py writes them:
//   {"prompt": "...", "answer": " 80160", "length": 512, "depth": 0.25, "context_tokens": 487}
// Each instance: tokenize the prompt (with the tokenizer's post-processor, as transformers'
// tokenizer(prompt)), prefill it through the cache, greedy-decode up to 8 tokens (stopping at
// EOS), decode them (special tokens skipped); correct when the first whitespace-separated word of
// the continuation, stripped of trailing .,;:!?, equals the answer (stripped).
//
//   auto insts = kvcal::read_task_file("data/tasks/passkey_eval.jsonl", "passkey");
//   kvcal::full_cache c(m.config(), 1, m.device(), m.dtype());
//   kvcal::task_outcome o = kvcal::run_task(m, tok, c, insts[0]);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/kv_cache.h"
#include "model/llama.h"
#include "model/tokenizer.h"

namespace kvcal {

struct task_instance {
  std::string task;  // "passkey", "recall", ... (the name it was read under)
  std::string prompt, answer;
  std::int64_t length = 0;  // target length (tokens) the generator built it for
  double depth = 0;         // where the needle sits, 0 = start, 1 = end
  std::string where;        // "file:line", for messages
};

// Reads every line of a JSON-lines task file (blank lines skipped). Errors name file:line.
std::vector<task_instance> read_task_file(const std::string& path, const std::string& task);

// Keeps at most `limit` instances per length (0 = all), spread over depths (round-robin over the
// depths in file order); with `lengths` non-empty, only those lengths. Order: by length.
std::vector<task_instance> select_tasks(const std::vector<task_instance>& all,
                                        const std::vector<std::int64_t>& lengths,
                                        std::int64_t limit);

// The exact-match rule above.
bool answer_matches(const std::string& continuation, const std::string& answer);

// Greedy continuation of `prompt_ids` through `cache` (reset first): at most max_new tokens,
// stopping after `maybe_eos` (>= 0) is produced. Returns the new token ids.
std::vector<std::int32_t> greedy_decode(const llama_model& model, kv_cache& cache,
                                        const std::vector<std::int32_t>& prompt_ids, int max_new,
                                        std::int32_t maybe_eos = -1);

struct task_outcome {
  bool correct = false;
  std::string continuation;
  std::int64_t prompt_tokens = 0;
};

task_outcome run_task(const llama_model& model, const tokenizer& tok, kv_cache& cache,
                      const task_instance& inst, int max_new = 8);

}  // namespace kvcal
