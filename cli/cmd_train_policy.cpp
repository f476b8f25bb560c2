// kvcal train-policy: a learned eviction scorer per layer trained on captures ->
// policy.safetensors, evaluated against H2O, recency and random on held-out sequences.
#include <ostream>
#include <sstream>
#include <string>

#include "cli/command.h"
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
       "policy.safetensors to write (report: <stem>.json next to it)")
      ("recipe", po::value<std::string>(&p.recipe)->default_value("future-attn"),
       "future-attn: KVzap-style, hidden state -> log future attention, one output per KV head; "
       "h2o-label: key -> is cumulative attention above the sequence median")
      ("features", po::value<std::string>(&p.features),
       "hidden | key [default: hidden for future-attn, key for h2o-label]")
      ("arch", po::value<std::string>(&p.arch), "linear | mlp [default: mlp]")
      ("hidden", po::value<std::string>(&hidden),
       "mlp hidden widths, comma list [default: 512 for future-attn, 128,64 for h2o-label]")
      ("target", po::value<std::string>(&p.target)->default_value("attn_next"),
       "future-attn target: attn_next (next W queries) | attn_cum (rest of the sequence)")
      ("epochs", po::value<int>(&p.epochs)->default_value(10), "passes over the training tokens")
      ("batch", po::value<std::int64_t>(&p.batch)->default_value(1024), "tokens per step")
      ("lr", po::value<double>(&p.lr)->default_value(1e-3), "peak AdamW learning rate (cosine)")
      ("weight-decay", po::value<double>(&p.weight_decay)->default_value(1e-2), "AdamW weight decay")
      ("patience", po::value<int>(&p.patience)->default_value(3),
       "stop after this many epochs without validation improvement (0 = never)")
      ("val-fraction", po::value<double>(&p.val_fraction)->default_value(0.2),
       "fraction of the sequences held out (validation and the evaluation)")
      ("val-max-tokens", po::value<std::int64_t>(&p.val_max_tokens)->default_value(16384),
       "at most this many held-out tokens")
      ("shuffle-buffer", po::value<std::int64_t>(&p.shuffle_buffer)->default_value(16384),
       "tokens shuffled together when streaming the captures")
      ("cache-mb", po::value<std::int64_t>(&p.cache_mb)->default_value(2048),
       "MB of training rows kept in memory after their first read (0 = re-read every epoch)")
      ("precision", po::value<std::string>(&p.precision)->default_value("fp32"),
       "fp32 | bf16 (mixed precision: bf16 matmuls in the training forward, fp32 weights, "
       "fp32 validation)")
      ("device", po::value<std::string>(&p.device)->default_value("auto"),
       "auto (CUDA when libtorch sees a GPU) | cpu | cuda")
      ("seed", po::value<std::uint64_t>(&p.seed)->default_value(0), "seed (split, init, order)")
      ("no-report", "do not write <stem>.json");
  // clang-format on
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
  p.write_report = vm.count("no-report") == 0;
  p.command_line = "kvcal train-policy";
  for (const auto& a : args) p.command_line += " " + a;
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
  if (!r.report_json_path.empty()) io.out << "report: " << r.report_json_path << "\n";
  return 0;
}

}  // namespace kvcal::cli
