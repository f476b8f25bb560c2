#include "model/compressed_eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kernels/common/error.h"
#include "kernels/common/log.h"
#include "kernels/common/progress.h"
#include "model/attention_error_probe.h"
#include "model/full_cache.h"
#include "model/gpu_learned_scorer.h"
#include "model/gpu_packed_cache.h"
#include "model/gpu_packed_options.h"
#include "model/tasks_eval.h"
#include "model/tokenizer.h"
#include "model/torch_util.h"
#include "runtime/io/atomic_file.h"
#include "runtime/preset.h"

namespace kvcal {

namespace {

double nll_of(const at::Tensor& logits, std::int64_t target) {  // logits [V] fp32
  return at::logsumexp(logits, 0).item<double>() - logits[target].item<double>();
}

std::string file_stem(const std::string& path) {
  std::string s = path.substr(path.find_last_of('/') + 1);
  const auto dot = s.find('.');
  if (dot != std::string::npos) s = s.substr(0, dot);
  const auto us = s.find('_');
  return us == std::string::npos ? s : s.substr(0, us);
}

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

}  // namespace

decode_ppl_result decode_perplexity(const llama_model& model, const std::vector<std::int32_t>& ids,
                                    kv_cache& cache, const decode_ppl_options& opt,
                                    runtime_cache* maybe_stats) {
  KVCAL_CHECK(opt.context >= 0 && opt.prefill >= 0 && opt.max_tokens >= 0,
              "decode_perplexity: context, prefill and max_tokens must be >= 0");
  const std::int64_t ctx = opt.context > 0 ? opt.context : default_context(model.config());
  KVCAL_CHECK(ctx >= 2, "decode_perplexity: context must be >= 2 tokens, got ", ctx);
  const std::int64_t mpe = model.config().max_position_embeddings;
  KVCAL_CHECK(mpe <= 0 || ctx <= mpe, "--context ", ctx,
              " is beyond the model's max_position_embeddings (", mpe, ")");
  const std::int64_t pre = opt.prefill > 0 ? opt.prefill : std::max<std::int64_t>(1, ctx / 2);
  KVCAL_CHECK(pre < ctx, "--prefill ", pre, " must be smaller than the context (", ctx, ")");
  std::int64_t n = static_cast<std::int64_t>(ids.size());
  if (opt.max_tokens > 0) n = std::min(n, opt.max_tokens);
  KVCAL_CHECK(n > pre, "decode_perplexity: the text has ", n,
              " tokens, not more than the prefill (", pre, ")");

  decode_ppl_result r;
  r.context = ctx;
  r.prefill = pre;
  r.tokens = n;
  std::int64_t to_predict = 0;
  for (std::int64_t s = 0; s < n; s += ctx)
    to_predict += std::max<std::int64_t>(0, std::min(ctx, n - s) - pre);
  at::Tensor all = at::empty({n}, at::TensorOptions().dtype(at::kLong));  // [n]
  auto* p = all.data_ptr<std::int64_t>();
  for (std::int64_t i = 0; i < n; ++i) p[i] = ids[static_cast<std::size_t>(i)];

  const auto t0 = std::chrono::steady_clock::now();
  std::unique_ptr<progress> bar;
  if (opt.show_progress) bar = std::make_unique<progress>(opt.label, to_predict, "tok");
  forward_options last;
  last.logits = logits_mode::last;
  double nll_sum = 0;
  std::int64_t longest = 0;
  for (std::int64_t s = 0; s < n; s += ctx) {
    const std::int64_t len = std::min(ctx, n - s);
    if (len <= pre) break;  // a last window no longer than the prefill scores nothing
    cache.reset();
    at::Tensor window = all.narrow(0, s, len).to(model.device());  // [len]
    at::Tensor logits = model.forward(window.narrow(0, 0, pre).unsqueeze(0), cache, last);
    nll_sum += nll_of(logits[0][0], p[s + pre]);  // logits [1, 1, V]
    for (std::int64_t t = pre; t + 1 < len; ++t) {
      logits = model.forward(window.narrow(0, t, 1).unsqueeze(0), cache, last);
      nll_sum += nll_of(logits[0][0], p[s + t + 1]);
    }
    r.predicted += len - pre;
    ++r.windows;
    if (bar) bar->advance(static_cast<std::uint64_t>(len - pre));
    if (maybe_stats && len > longest) {
      longest = len;
      const cache_stats st = maybe_stats->stats();
      r.has_stats = true;
      r.bytes_held = st.bytes_held;
      r.fp16_bytes = st.fp16_bytes;
      r.fixed_bytes = st.fixed_bytes;
      r.cached_tokens = st.tokens.empty() ? 0 : st.tokens.back();
    }
  }
  if (bar) bar->finish();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.mean_nll = nll_sum / static_cast<double>(r.predicted);
  r.ppl = std::exp(r.mean_nll);
  return r;
}

double compressed_eval_result::accuracy(const std::string& task, std::size_t column,
                                        std::int64_t length) const {
  std::int64_t n = 0, ok = 0;
  for (const auto& c : cells)
    if (c.task == task && (length <= 0 || c.length == length) && column < c.correct.size()) {
      n += c.n;
      ok += c.correct[column];
    }
  return n ? static_cast<double>(ok) / static_cast<double>(n) : 0.0;
}

compressed_eval_result run_compressed_eval(const compressed_eval_params& p) {
  const eval_params& b = p.base;
  const at::Device device = parse_device(b.device);
  const at::ScalarType dtype = b.dtype.empty() ? (device.is_cuda() ? at::kBFloat16 : at::kFloat)
                                               : parse_compute_dtype(b.dtype);
  const std::string config_path = b.model_dir + "/config.json";
  KVCAL_CHECK(std::ifstream(config_path).good(), config_path,
              ": not found (is this a Hugging Face model folder?)");
  const std::string tok_path = b.model_dir + "/tokenizer.json";
  KVCAL_CHECK(std::ifstream(tok_path).good(), tok_path,
              ": not found (the model folder needs its tokenizer)");

  // Read everything that can be wrong before the long runs start.
  const model_config cfg = read_model_config(config_path);
  KVCAL_CHECK(!p.gpu_kernels || device.is_cuda(), "--gpu-kernels needs --device cuda");
  std::vector<preset_summary> presets;
  std::vector<gpu_packed_cache::options> gpu_opts;  // with --gpu-kernels, one per preset
  for (const auto& path : p.presets) {
    preset_file f(path);
    check_fingerprint(f.recipe().model, cfg, path, config_path);  // names both files
    presets.push_back({path, f.recipe().name, {}});
    if (p.gpu_kernels)
      gpu_opts.push_back(gpu_packed_options_of(f.recipe(), f.tensors().tensors(), path, device));
  }
  std::vector<task_instance> insts;
  std::vector<std::string> files = p.task_files;
  for (const auto& t : p.tasks) {
    KVCAL_CHECK(!t.empty(), "--tasks: empty task name");
    if (std::none_of(p.task_files.begin(), p.task_files.end(),
                     [&](const std::string& f) { return file_stem(f) == t; }))
      files.push_back((p.tasks_dir.empty() ? std::string("data/tasks") : p.tasks_dir) + "/" + t +
                      "_eval.jsonl");
  }
  for (const auto& f : files) {
    auto sel = select_tasks(read_task_file(f, file_stem(f)), p.task_lengths, p.task_limit);
    KVCAL_CHECK(!sel.empty(), f, ": no instance of the requested lengths");
    insts.insert(insts.end(), sel.begin(), sel.end());
  }
  KVCAL_CHECK(!(p.skip_ppl && insts.empty()), "eval: nothing to do (no PPL, no tasks)");

  const tokenizer tok = tokenizer::load(tok_path);
  const llama_model model = llama_model::load(b.model_dir, cfg, device, dtype);

  compressed_eval_result r;
  r.model_dir = b.model_dir;
  r.text_path = b.text_path;
  r.device = device.str();
  r.dtype = compute_dtype_name(dtype);
  r.gpu_kernels = p.gpu_kernels;
  r.presets = presets;

  decode_ppl_options o;
  o.context = b.context;
  o.prefill = p.prefill;
  o.max_tokens = b.max_tokens;
  o.show_progress = b.show_progress;
  const std::int64_t ctx = o.context > 0 ? o.context : default_context(cfg);
  if (!p.skip_ppl) {
    std::ifstream f(b.text_path, std::ios::binary);
    KVCAL_CHECK(f.good(), b.text_path, ": cannot open the text file");
    std::ostringstream ss;
    ss << f.rdbuf();
    const std::vector<std::int32_t> ids = tok.encode(ss.str(), /*add_special_tokens=*/true);
    for (std::int32_t id : ids)
      KVCAL_CHECK(id >= 0 && id < cfg.vocab_size, tok_path, ": token id ", id,
                  " is outside the model's vocabulary (", cfg.vocab_size, ")");
    full_cache plain(cfg, 1, device, dtype, ctx);
    o.label = "baseline";
    r.baseline = decode_perplexity(model, ids, plain, o);
    for (std::size_t i = 0; i < r.presets.size(); ++i) {
      preset_summary& ps = r.presets[i];
      if (p.gpu_kernels) {
        gpu_packed_cache gc(cfg, 1, ctx + 1, gpu_opts[i], device);
        o.label = ps.name.empty() ? ps.path : ps.name;
        ps.ppl = decode_perplexity(model, ids, gc, o);
        ps.ppl.has_stats = true;
        ps.ppl.bytes_held = gc.bytes_used();
        ps.ppl.cached_tokens = gc.length();
        ps.ppl.fp16_bytes = static_cast<double>(gc.length() * cfg.num_hidden_layers *
                                                cfg.num_key_value_heads * cfg.head_dim * 2 * 2);
        ps.ppl.fixed_bytes =
            gc.fixed_bytes() + (gpu_opts[i].learned ? gpu_opts[i].learned->bytes() : 0);
        continue;
      }
      runtime_cache rc(cfg, ps.path, 1);
      rc.reserve(ctx, std::max<std::int64_t>(1, o.prefill > 0 ? o.prefill : ctx / 2));
      o.label = ps.name.empty() ? ps.path : ps.name;
      attention_error_probe probe(rc, cfg, device, dtype, ctx);
      ps.ppl = decode_perplexity(model, ids, probe, o, &rc);
      ps.ppl.attn_rel_error = probe.relative_errors();
    }
    r.has_ppl = true;
  }

  if (!insts.empty()) {
    const auto t0 = std::chrono::steady_clock::now();
    std::map<std::tuple<std::string, std::int64_t, double>, task_cell> cells;
    full_cache plain(cfg, 1, device, dtype);
    std::vector<std::unique_ptr<kv_cache>> rcs;
    for (std::size_t i = 0; i < r.presets.size(); ++i) {
      if (p.gpu_kernels)
        rcs.push_back(std::make_unique<gpu_packed_cache>(
            cfg, 1, std::max<std::int64_t>(cfg.max_position_embeddings, 4096), gpu_opts[i],
            device));
      else
        rcs.push_back(std::make_unique<runtime_cache>(cfg, r.presets[i].path, 1));
    }
    std::unique_ptr<progress> bar;
    if (b.show_progress)
      bar = std::make_unique<progress>("tasks", insts.size() * (1 + rcs.size()), "run");
    for (const auto& inst : insts) {
      task_cell& c = cells[{inst.task, inst.length, inst.depth}];
      if (c.correct.empty()) {
        c.task = inst.task;
        c.length = inst.length;
        c.depth = inst.depth;
        c.correct.assign(1 + rcs.size(), 0);
      }
      ++c.n;
      task_outcome o0 = run_task(model, tok, plain, inst);
      c.correct[0] += o0.correct;
      log_debug(inst.where, ": baseline '", o0.continuation, "' want '", inst.answer, "'");
      if (bar) bar->advance();
      for (std::size_t i = 0; i < rcs.size(); ++i) {
        task_outcome oi = run_task(model, tok, *rcs[i], inst);
        c.correct[1 + i] += oi.correct;
        log_debug(inst.where, ": ", r.presets[i].name, " '", oi.continuation, "'");
        if (bar) bar->advance();
      }
    }
    if (bar) bar->finish();
    for (auto& [k, c] : cells) r.cells.push_back(c);
    r.task_instances = static_cast<std::int64_t>(insts.size());
    r.task_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  if (!b.json_out.empty()) write_file_atomic(b.json_out, compressed_eval_json(r) + "\n");
  return r;
}

namespace {

nlohmann::json ppl_json(const decode_ppl_result& d) {
  nlohmann::json j;
  j["ppl"] = d.ppl;
  j["mean_nll"] = d.mean_nll;
  j["predicted_tokens"] = d.predicted;
  j["windows"] = d.windows;
  j["seconds"] = d.seconds;
  if (d.has_stats) {
    j["bytes_held"] = d.bytes_held;
    j["fp16_bytes"] = d.fp16_bytes;
    j["ratio"] = d.ratio();
    j["fixed_bytes"] = d.fixed_bytes;
    j["cached_tokens"] = d.cached_tokens;
  }
  if (!d.attn_rel_error.empty()) j["attn_rel_error_per_layer"] = d.attn_rel_error;
  return j;
}

}  // namespace

std::string compressed_eval_json(const compressed_eval_result& r) {
  nlohmann::json j;
  j["model"] = r.model_dir;
  j["device"] = r.device;
  j["dtype"] = r.dtype;
  j["gpu_kernels"] = r.gpu_kernels;
  if (r.has_ppl) {
    j["text"] = r.text_path;
    j["protocol"] = "decode";
    j["context"] = r.baseline.context;
    j["prefill"] = r.baseline.prefill;
    j["tokens"] = r.baseline.tokens;
    j["baseline"] = ppl_json(r.baseline);
  }
  nlohmann::json ps = nlohmann::json::array();
  for (std::size_t i = 0; i < r.presets.size(); ++i) {
    const auto& s = r.presets[i];
    nlohmann::json e;
    e["preset"] = s.path;
    e["name"] = s.name;
    if (r.has_ppl) {
      e["ppl"] = ppl_json(s.ppl);
      e["delta_ppl_pct"] = 100.0 * (s.ppl.ppl / r.baseline.ppl - 1.0);
    }
    ps.push_back(e);
  }
  j["presets"] = ps;
  nlohmann::json cells = nlohmann::json::array();
  for (const auto& c : r.cells)
    cells.push_back({{"task", c.task},
                     {"length", c.length},
                     {"depth", c.depth},
                     {"n", c.n},
                     {"correct", c.correct}});
  j["task_cells"] = cells;
  j["task_seconds"] = r.task_seconds;
  return j.dump(2);
}

std::string compressed_eval_report(const compressed_eval_result& r) {
  std::ostringstream os;
  if (r.has_ppl) {
    const auto& b = r.baseline;
    os << r.text_path << ": decode-PPL over " << b.predicted << " decoded tokens (" << b.windows
       << " window" << (b.windows == 1 ? "" : "s") << " of " << b.context << ", prefill "
       << b.prefill << "); " << r.device << " " << r.dtype << "\n\n";
    os << "| cache | bytes held | fp16 bytes | ratio | PPL | delta % | seconds |\n"
       << "|---|---|---|---|---|---|---|\n";
    os << "| full (baseline) | - | - | 1.00 | " << fmt("%.4f", b.ppl) << " | - | "
       << fmt("%.1f", b.seconds) << " |\n";
    for (const auto& s : r.presets)
      os << "| " << (s.name.empty() ? s.path : s.name) << " | " << s.ppl.bytes_held << " | "
         << fmt("%.0f", s.ppl.fp16_bytes) << " | " << fmt("%.2f", s.ppl.ratio()) << " | "
         << fmt("%.4f", s.ppl.ppl) << " | " << fmt("%+.2f", 100.0 * (s.ppl.ppl / b.ppl - 1.0))
         << " | " << fmt("%.1f", s.ppl.seconds) << " |\n";
    os << "(bytes at the end of a " << b.context << "-token window: "
       << (r.gpu_kernels ? "the GPU cache's live records + fp16 rows"
                         : "the CPU runtime's pages, as allocated")
       << ")\n";
    if (!r.presets.empty() && !r.presets.front().ppl.attn_rel_error.empty()) {
      os << "\nper-layer attention-output relative error vs exact attention over the same inputs "
            "(every attend call)\n\n| layer |";
      for (const auto& s : r.presets) os << " " << (s.name.empty() ? s.path : s.name) << " |";
      os << "\n|---|";
      for (std::size_t i = 0; i < r.presets.size(); ++i) os << "---|";
      os << "\n";
      for (std::size_t l = 0; l < r.presets.front().ppl.attn_rel_error.size(); ++l) {
        os << "| " << l << " |";
        for (const auto& s : r.presets)
          os << " " << fmt("%.4f", l < s.ppl.attn_rel_error.size() ? s.ppl.attn_rel_error[l] : 0.0)
             << " |";
        os << "\n";
      }
    }
  }
  if (!r.cells.empty()) {
    std::vector<std::string> tasks;
    for (const auto& c : r.cells)
      if (std::find(tasks.begin(), tasks.end(), c.task) == tasks.end()) tasks.push_back(c.task);
    for (const auto& t : tasks) {
      os << "\n" << t << " accuracy (greedy, exact match): baseline";
      for (const auto& s : r.presets) os << " / " << (s.name.empty() ? s.path : s.name);
      os << "\n\n| length | depth | n | baseline |";
      for (const auto& s : r.presets) os << " " << (s.name.empty() ? s.path : s.name) << " |";
      os << "\n|---|---|---|---|";
      for (std::size_t i = 0; i < r.presets.size(); ++i) os << "---|";
      os << "\n";
      for (const auto& c : r.cells) {
        if (c.task != t) continue;
        os << "| " << c.length << " | " << fmt("%.2f", c.depth) << " | " << c.n << " |";
        for (std::int64_t k : c.correct) os << " " << k << "/" << c.n << " |";
        os << "\n";
      }
      os << "| all | | |";
      for (std::size_t k = 0; k <= r.presets.size(); ++k)
        os << " " << fmt("%.1f%%", 100.0 * r.accuracy(t, k)) << " |";
      os << "\n";
    }
  }
  return os.str();
}

}  // namespace kvcal
