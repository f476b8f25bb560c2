// kvcal train-policy: a learned eviction scorer per layer trained on captures ->
// policy.safetensors, evaluated against H2O, recency and random on held-out sequences.
#include <ostream>
#include <sstream>
#include <string>

#include "cli/command.h"
#include "cli/train_options.h"
#include "train/policy_train.h"

namespace kvcal::cli {

int run_train_policy(const std::vector<std::string>& args, io& io) {
  policy_train_params p;
  std::string hidden;
  po::options_description opts("Options");
  // clang-format off
  opts.add_options()
      ("capture", po::value<std::vector<std::string>>(&p.captures)->multitoken()->required(),
       "capture file(s) from kvcal capture with attn (and hidden or k)")
      ("out", po::value<std::string>(&p.out)->required(),
       "policy.safetensors to write (report: <stem>.json and <stem>.svg next to it)")
      ("recipe", po::value<std::string>(&p.recipe)->default_value("future-attn"),
       "future-attn: KVzap-style, hidden state -> log future attention, one output per KV head; "
       "h2o-label: key -> is cumulative attention above the sequence median")
      ("features", po::value<std::string>(&p.features),
       "hidden | key [default: hidden for future-attn, key for h2o-label]")
      ("arch", po::value<std::string>(&p.arch), "linear | mlp [default: mlp]")
      ("hidden", po::value<std::string>(&hidden),
       "mlp hidden widths, comma list [default: 512 for future-attn, 128,64 for h2o-label]")
      ("target", po::value<std::string>(&p.target)->default_value("attn_next"),
       "future-attn target: attn_next (next W queries) | attn_cum (rest of the sequence)");
  // clang-format on
  add_train_options(
      opts, p,
      {"tokens per step", "fraction of the sequences held out (validation and the evaluation)",
       "do not write <stem>.json / <stem>.svg"});
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse_options("train-policy", "--capture FILE [FILE...] --out policy.safetensors [options]",
                     opts, pos, args, vm, io))
    return 0;
  if (!hidden.empty()) {
    std::stringstream in(hidden);
    std::string item;
    while (std::getline(in, item, ',')) {
      try {
        p.hidden.push_back(std::stoi(item));
      } catch (const std::exception&) {
        throw usage_error("--hidden: '" + item + "' is not a number");
      }
    }
  }
  read_train_flags(vm, "train-policy", args, p);
  validate_policy_params(p);

  const policy_train_result r = run_train_policy(p);
  std::string widths;
  for (int w : r.hidden) widths += (widths.empty() ? "" : ",") + std::to_string(w);
  io.out << p.out << ": " << p.recipe << " policy, " << r.features << " features (in_dim "
         << r.in_dim << "), " << r.arch << (widths.empty() ? "" : " [" + widths + "]") << ", "
         << r.epochs_run << " epoch(s), " << r.steps << " steps on " << r.device_used << " ("
         << static_cast<long long>(r.samples_per_s) << " tokens/s)\n";
  io.out << "validation loss " << r.init_val << " at initialisation, " << r.best_val << " best\n";
  io.out << policy_report_table(r);
  if (!r.report_json_path.empty())
    io.out << "report: " << r.report_json_path << ", plot: " << r.svg_path << "\n";
  return 0;
}

}  // namespace kvcal::cli
