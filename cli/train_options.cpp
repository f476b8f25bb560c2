#include "cli/train_options.h"

namespace kvcal::cli {

void add_train_options(po::options_description& opts, train_loop_params& p,
                       const train_option_help& help) {
  // clang-format off
  opts.add_options()
      ("epochs", po::value<int>(&p.epochs)->default_value(p.epochs),
       "passes over the training tokens")
      ("batch", po::value<std::int64_t>(&p.batch)->default_value(p.batch), help.batch)
      ("lr", po::value<double>(&p.lr)->default_value(p.lr), "peak AdamW learning rate (cosine)")
      ("weight-decay", po::value<double>(&p.weight_decay)->default_value(p.weight_decay),
       "AdamW weight decay")
      ("patience", po::value<int>(&p.patience)->default_value(p.patience),
       "stop after this many epochs without validation improvement (0 = never)")
      ("val-fraction", po::value<double>(&p.val_fraction)->default_value(p.val_fraction),
       help.val_fraction)
      ("val-max-tokens", po::value<std::int64_t>(&p.val_max_tokens)->default_value(p.val_max_tokens),
       "at most this many held-out tokens")
      ("shuffle-buffer", po::value<std::int64_t>(&p.shuffle_buffer)->default_value(p.shuffle_buffer),
       "tokens shuffled together when streaming the captures")
      ("cache-mb", po::value<std::int64_t>(&p.cache_mb)->default_value(p.cache_mb),
       "MB of training rows kept in memory after their first read (0 = re-read every epoch)")
      ("precision", po::value<std::string>(&p.precision)->default_value(p.precision),
       "fp32 | bf16 (mixed precision: bf16 matmuls in the training forward, fp32 weights, "
       "fp32 validation)")
      ("device", po::value<std::string>(&p.device)->default_value("auto"),
       "auto (CUDA when libtorch sees a GPU) | cpu | cuda")
      ("seed", po::value<std::uint64_t>(&p.seed)->default_value(p.seed), "seed (split, init, order)")
      ("resume", "continue from <out>.ckpt (written after every epoch)")
      ("no-report", help.no_report);
  // clang-format on
}

void read_train_flags(const po::variables_map& vm, const std::string& name,
                      const std::vector<std::string>& args, train_loop_params& p) {
  p.resume = vm.count("resume") > 0;
  p.write_report = vm.count("no-report") == 0;
  p.command_line = "kvcal " + name;
  for (const auto& a : args) p.command_line += " " + a;
}

}  // namespace kvcal::cli
