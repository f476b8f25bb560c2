#include "model/tasks_eval.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kernels/common/error.h"

namespace kvcal {

std::vector<task_instance> read_task_file(const std::string& path, const std::string& task) {
  std::ifstream f(path);
  KVCAL_CHECK(f.good(), path, ": cannot open the task file");
  std::vector<task_instance> out;
  std::string line;
  for (int no = 1; std::getline(f, line); ++no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(no);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      KVCAL_FAIL(where, ": not a JSON object (", e.what(), ")");
    }
    KVCAL_CHECK(j.is_object(), where, ": not a JSON object");
    task_instance t;
    t.task = task;
    t.where = where;
    try {
      t.prompt = j.at("prompt").get<std::string>();
      t.answer = j.at("answer").get<std::string>();
      t.length = j.at("length").get<std::int64_t>();
      t.depth = j.contains("depth") ? j.at("depth").get<double>() : 0.0;
    } catch (const nlohmann::json::exception& e) {
      KVCAL_FAIL(where, ": needs string prompt / answer and integer length (", e.what(), ")");
    }
    KVCAL_CHECK(!t.prompt.empty(), where, ": empty prompt");
    KVCAL_CHECK(t.answer.find_first_not_of(" \t\n") != std::string::npos, where, ": empty answer");
    out.push_back(std::move(t));
  }
  KVCAL_CHECK(!out.empty(), path, ": no task instances");
  return out;
}

std::vector<task_instance> select_tasks(const std::vector<task_instance>& all,
                                        const std::vector<std::int64_t>& lengths,
                                        std::int64_t limit) {
  // length -> instances in round-robin order over depths (file order inside a depth).
  std::map<std::int64_t, std::vector<const task_instance*>> by_length;
  std::map<std::int64_t, std::vector<std::pair<double, std::vector<const task_instance*>>>> depth;
  for (const auto& t : all) {
    if (!lengths.empty() && std::find(lengths.begin(), lengths.end(), t.length) == lengths.end())
      continue;
    auto& ds = depth[t.length];
    auto it = std::find_if(ds.begin(), ds.end(), [&](const auto& p) { return p.first == t.depth; });
    if (it == ds.end()) it = ds.insert(ds.end(), {t.depth, {}});
    it->second.push_back(&t);
  }
  std::vector<task_instance> out;
  for (auto& [len, ds] : depth) {
    std::vector<const task_instance*> rr;
    for (std::size_t i = 0;; ++i) {
      bool any = false;
      for (auto& d : ds)
        if (i < d.second.size()) {
          rr.push_back(d.second[i]);
          any = true;
        }
      if (!any) break;
    }
    const std::size_t n =
        limit > 0 ? std::min<std::size_t>(rr.size(), static_cast<std::size_t>(limit)) : rr.size();
    for (std::size_t i = 0; i < n; ++i) out.push_back(*rr[i]);
  }
  return out;
}

bool answer_matches(const std::string& continuation, const std::string& answer) {
  auto words = [](const std::string& s) {
    std::istringstream is(s);
    std::vector<std::string> w;
    for (std::string x; is >> x;) w.push_back(x);
    return w;
  };
  const auto got = words(continuation);
  const auto want = words(answer);
  if (got.empty() || want.size() != 1) return false;
  std::string first = got[0];
  while (!first.empty() && std::string(".,;:!?").find(first.back()) != std::string::npos)
    first.pop_back();
  return first == want[0];
}

std::vector<std::int32_t> greedy_decode(const llama_model& model, kv_cache& cache,
                                        const std::vector<std::int32_t>& prompt_ids, int max_new,
                                        std::int32_t maybe_eos) {
  KVCAL_CHECK(!prompt_ids.empty(), "greedy_decode: empty prompt");
  cache.reset();
  const auto n = static_cast<std::int64_t>(prompt_ids.size());
  at::Tensor ids = at::empty({1, n}, at::TensorOptions().dtype(at::kLong));  // [1, n]
  auto* p = ids.data_ptr<std::int64_t>();
  for (std::int64_t i = 0; i < n; ++i) p[i] = prompt_ids[static_cast<std::size_t>(i)];
  forward_options last;
  last.logits = logits_mode::last;
  at::Tensor logits = model.forward(ids.to(model.device()), cache, last);  // [1, 1, V]
  std::vector<std::int32_t> out;
  for (int s = 0; s < max_new; ++s) {
    const auto next = static_cast<std::int32_t>(logits[0][0].argmax().item<std::int64_t>());
    out.push_back(next);
    if (next == maybe_eos || s + 1 == max_new) break;
    at::Tensor step = at::full({1, 1}, next, at::TensorOptions().dtype(at::kLong));
    logits = model.forward(step.to(model.device()), cache, last);
  }
  return out;
}

task_outcome run_task(const llama_model& model, const tokenizer& tok, kv_cache& cache,
                      const task_instance& inst, int max_new) {
  const std::vector<std::int32_t> ids = tok.encode(inst.prompt, /*add_special_tokens=*/true);
  const std::int64_t ctx = model.config().max_position_embeddings;
  KVCAL_CHECK(ctx <= 0 || static_cast<std::int64_t>(ids.size()) + max_new <= ctx, inst.where,
              ": prompt of ", ids.size(), " tokens + ", max_new,
              " new ones exceeds the model's context (", ctx, ")");
  const std::int32_t eos = tok.eos_id().value_or(-1);
  const std::vector<std::int32_t> gen = greedy_decode(model, cache, ids, max_new, eos);
  task_outcome o;
  o.prompt_tokens = static_cast<std::int64_t>(ids.size());
  o.continuation = tok.decode(gen, /*skip_special_tokens=*/true);
  o.correct = answer_matches(o.continuation, inst.answer);
  return o;
}

}  // namespace kvcal
