// kvcal eval: baseline perplexity of a model over a text with the plain full-precision cache
// (convention in docs/eval.md); with --preset and/or --tasks, quality through compressed caches
// (decode-PPL and retrieval, side by side with the baseline: model/compressed_eval.h).
// Defaults: the reference model and the committed eval sets (cli/data_paths.h).
#include <algorithm>
#include <cstdio>
#include <ostream>
#include <sstream>
#include <string>

#include "cli/command.h"
#include "cli/data_paths.h"
#include "model/compressed_eval.h"
#include "model/perplexity.h"

namespace kvcal::cli {

namespace {

std::vector<std::string> split_commas(const std::vector<std::string>& in) {
  std::vector<std::string> out;
  for (const auto& s : in) {
    std::stringstream ss(s);
    for (std::string x; std::getline(ss, x, ',');)
      if (!x.empty()) out.push_back(x);
  }
  return out;
}

}  // namespace

int run_eval(const std::vector<std::string>& args, io& io) {
  eval_params p;
  compressed_eval_params cp;
  std::vector<std::string> tasks, parts, lengths;
  std::int64_t prefix = 0;
  std::string data_why;
  const std::string data = data_dir(&data_why);
  po::options_description opts("Options (data directory: " + data + ", from " + data_why +
                               "; $KVCAL_DATA_DIR, else ./data, else the source tree's data/)");
  // clang-format off
  opts.add_options()
      ("model", po::value<std::string>(&p.model_dir)->default_value(default_model_dir()),
       "Hugging Face model folder (config.json, model*.safetensors, tokenizer.json); default: "
       "the reference model")
      ("text", po::value<std::string>(&p.text_path)->default_value(default_eval_text()),
       "UTF-8 text file to score (the PPL part); default: the committed eval text")
      ("context", po::value<std::int64_t>(&p.context)->default_value(0),
       "window length in tokens (0 = min(max_position_embeddings, 2048))")
      ("device", po::value<std::string>(&p.device)->default_value("cpu"), "cpu | cuda | cuda:N")
      ("dtype", po::value<std::string>(&p.dtype),
       "fp32 | bf16 | fp16 (default: fp32 on cpu, bf16 on cuda)")
      ("max-tokens", po::value<std::int64_t>(&p.max_tokens)->default_value(0),
       "score only the first N tokens of the text (0 = all)")
      ("json", po::value<std::string>(&p.json_out), "also write the figures as JSON to this file")
      ("preset", po::value<std::vector<std::string>>(&cp.presets)->multitoken(),
       "preset file(s): decode-PPL (and tasks) through each compressed cache vs the baseline")
      ("prefill", po::value<std::int64_t>(&cp.prefill)->default_value(0),
       "with --preset/--tasks: tokens prefilled per window, the rest decoded (0 = context/2)")
      ("prefix", po::value<std::int64_t>(&prefix), "the same as --prefill")
      ("task", po::value<std::vector<std::string>>(&parts)->multitoken(),
       "what to measure: ppl, passkey, recall (repeatable or a comma list; default: ppl)")
      ("tasks", po::value<std::vector<std::string>>(&tasks)->multitoken(),
       "retrieval tasks on top of ppl, e.g. passkey,recall (files <data>/tasks/<task>_eval.jsonl)")
      ("task-file", po::value<std::vector<std::string>>(&cp.task_files)->multitoken(),
       "task file(s) (JSON lines; task name = file name up to the first '_')")
      ("task-lengths", po::value<std::vector<std::string>>(&lengths)->multitoken(),
       "only task instances of these lengths, e.g. 512,2048")
      ("task-limit", po::value<std::int64_t>(&cp.task_limit)->default_value(0),
       "at most N instances per task and length, spread over depths (0 = all)")
      ("no-ppl", po::bool_switch(&cp.skip_ppl), "with --tasks: skip the PPL part")
      ("gpu-kernels", po::bool_switch(&cp.gpu_kernels),
       "run the presets through the CUDA kernels (needs --device cuda; KIVI-style / fp16 "
       "presets) instead of the CPU runtime");
  // clang-format on
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse_options("eval",
                     "[--model DIR] [--text FILE] [--context N] [--preset P ...] [--prefix N] "
                     "[--task ppl,passkey,recall] [--device cpu|cuda] [--json OUT]",
                     opts, pos, args, vm, io))
    return 0;
  if (p.context < 0 || p.context == 1) throw usage_error("--context must be 0 (default) or >= 2");
  if (p.max_tokens < 0) throw usage_error("--max-tokens must be >= 0");
  if (vm.count("prefix")) {
    if (!vm["prefill"].defaulted() && cp.prefill != prefix)
      throw usage_error("--prefix and --prefill are the same option; give one");
    cp.prefill = prefix;
  }
  if (cp.prefill < 0) throw usage_error("--prefill must be >= 0");
  if (cp.task_limit < 0) throw usage_error("--task-limit must be >= 0");
  cp.tasks = split_commas(tasks);
  // --task: ppl is the perplexity part, anything else a retrieval task.
  if (vm.count("task")) {
    bool ppl = false;
    for (const auto& t : split_commas(parts)) {
      if (t == "ppl")
        ppl = true;
      else if (std::find(cp.tasks.begin(), cp.tasks.end(), t) == cp.tasks.end())
        cp.tasks.push_back(t);
    }
    if (!ppl) cp.skip_ppl = true;
    if (cp.skip_ppl && cp.tasks.empty() && cp.task_files.empty())
      throw usage_error("--task: nothing to measure (ppl, passkey, recall)");
  }
  if (p.text_path.empty() && !cp.skip_ppl) throw usage_error("--text: empty path");
  if (vm["model"].defaulted()) check_default_model_dir(p.model_dir);
  cp.tasks_dir = default_tasks_dir();
  cp.presets = split_commas(cp.presets);
  cp.task_files = split_commas(cp.task_files);
  for (const auto& l : split_commas(lengths)) {
    try {
      cp.task_lengths.push_back(std::stoll(l));
    } catch (const std::exception&) {
      throw usage_error("--task-lengths: '" + l + "' is not a number");
    }
  }
  if (cp.skip_ppl && cp.tasks.empty() && cp.task_files.empty())
    throw usage_error("--no-ppl needs --tasks or --task-file");
  if (!cp.presets.empty() || !cp.tasks.empty() || !cp.task_files.empty()) {
    cp.base = p;
    const compressed_eval_result cr = run_compressed_eval(cp);
    io.out << compressed_eval_report(cr);
    if (!p.json_out.empty()) io.out << "wrote " << p.json_out << "\n";
    return 0;
  }
  const eval_result r = run_eval(p);
  char ppl[64], nll[64];
  std::snprintf(ppl, sizeof ppl, "%.4f", r.ppl.ppl);
  std::snprintf(nll, sizeof nll, "%.5f", r.ppl.mean_nll);
  io.out << r.text_path << ": PPL " << ppl << " (mean NLL " << nll << " nats) over "
         << r.ppl.predicted << " predicted tokens, " << r.ppl.windows << " window"
         << (r.ppl.windows == 1 ? "" : "s") << " of " << r.ppl.context << " tokens; " << r.device
         << " " << r.dtype << ", full cache"
         << (r.bos_added ? ", BOS prepended by the tokenizer" : "") << "\n";
  if (!p.json_out.empty()) io.out << "wrote " << p.json_out << "\n";
  return 0;
}

}  // namespace kvcal::cli
