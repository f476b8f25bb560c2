// kvcal train-ae: per (layer[, KV head], K|V) autoencoders trained on captures -> ae.safetensors.
#include <ostream>
#include <string>

#include "cli/command.h"
#include "train/ae_train.h"

namespace kvcal::cli {

int run_train_ae(const std::vector<std::string>& args, io& io) {
  ae_train_params p;
  po::options_description opts("Options");
  // clang-format off
  opts.add_options()
      ("capture", po::value<std::vector<std::string>>(&p.captures)->multitoken()->required(),
       "capture file(s) from kvcal capture (one model)")
      ("out", po::value<std::string>(&p.out)->required(),
       "ae.safetensors to write (report: <stem>.json and <stem>.svg next to it)")
      ("target", po::value<std::string>(&p.target)->default_value("kv"),
       "k (pre-RoPE keys) | v | kv")
      ("latent", po::value<int>(&p.latent), "latent size, 1 <= N < head_dim")
      ("ratio", po::value<double>(&p.ratio), "latent = round(head_dim / R) (instead of --latent)")
      ("arch", po::value<std::string>(&p.arch)->default_value("linear"),
       "linear | mlp (one GELU hidden layer on each side plus the linear path)")
      ("hidden", po::value<int>(&p.hidden)->default_value(0), "mlp hidden width (0 = head_dim)")
      ("per", po::value<std::string>(&p.per)->default_value("kv-head"),
       "kv-head: one AE per layer and KV head; layer: one per layer shared by its heads")
      ("loss", po::value<std::string>(&p.loss)->default_value("recon"),
       "recon: relative MSE; attn: attention-output error with the captured queries (needs q)")
      ("pca", po::value<std::string>(&p.pca),
       "pca.h5 from kvcal fit-pca: initialisation and baseline (default: PCA fitted here)")
      ("init", po::value<std::string>(&p.init)->default_value("pca"), "pca | random")
      ("epochs", po::value<int>(&p.epochs)->default_value(20), "passes over the training tokens")
      ("batch", po::value<std::int64_t>(&p.batch)->default_value(512),
       "tokens per step (attn: whole sequences up to this many tokens)")
      ("lr", po::value<double>(&p.lr)->default_value(1e-3), "peak AdamW learning rate (cosine)")
      ("weight-decay", po::value<double>(&p.weight_decay)->default_value(1e-4), "AdamW weight decay")
      ("patience", po::value<int>(&p.patience)->default_value(3),
       "stop after this many epochs without validation improvement (0 = never)")
      ("val-fraction", po::value<double>(&p.val_fraction)->default_value(0.1),
       "fraction of the sequences held out for validation")
      ("val-max-tokens", po::value<std::int64_t>(&p.val_max_tokens)->default_value(8192),
       "at most this many held-out tokens")
      ("shuffle-buffer", po::value<std::int64_t>(&p.shuffle_buffer)->default_value(8192),
       "tokens shuffled together when streaming the captures")
      ("cache-mb", po::value<std::int64_t>(&p.cache_mb)->default_value(2048),
       "MB of training rows kept in memory after their first read (0 = re-read every epoch)")
      ("precision", po::value<std::string>(&p.precision)->default_value("fp32"),
       "fp32 | bf16 (mixed precision: bf16 matmuls in the training forward, fp32 weights, "
       "fp32 validation)")
      ("device", po::value<std::string>(&p.device)->default_value("auto"),
       "auto (CUDA when libtorch sees a GPU) | cpu | cuda")
      ("seed", po::value<std::uint64_t>(&p.seed)->default_value(0), "seed (split, init, order)")
      ("resume", "continue from <out>.ckpt (written after every epoch)")
      ("no-report", "do not write <stem>.json / <stem>.svg");
  // clang-format on
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse_options("train-ae",
                     "--capture FILE [FILE...] --out ae.safetensors (--latent N | --ratio R) "
                     "[options]",
                     opts, pos, args, vm, io))
    return 0;
  if (vm.count("latent") && vm.count("ratio"))
    throw usage_error("give one of --latent and --ratio");
  if (!vm.count("latent") && !vm.count("ratio")) throw usage_error("give --latent N or --ratio R");
  if (vm.count("latent") && p.latent < 1) throw usage_error("--latent must be >= 1");
  if (vm.count("ratio") && !(p.ratio > 1)) throw usage_error("--ratio must be > 1");
  p.resume = vm.count("resume") > 0;
  p.write_report = vm.count("no-report") == 0;
  p.command_line = "kvcal train-ae";
  for (const auto& a : args) p.command_line += " " + a;
  validate_ae_params(p);

  const ae_train_result r = run_train_ae(p);
  io.out << p.out << ": " << p.arch << " autoencoders, latent " << r.latent << ", " << r.epochs_run
         << " epoch(s), " << r.steps << " steps on " << r.device_used << " ("
         << static_cast<long long>(r.samples_per_s) << " tokens/s)"
         << (r.early_stopped ? ", stopped early" : "") << "\n";
  io.out << "validation score " << r.init_val << " at initialisation, " << r.best_val << " best\n";
  io.out << ae_report_table(r);
  if (!r.report_json_path.empty())
    io.out << "report: " << r.report_json_path << ", plot: " << r.svg_path << "\n";
  return 0;
}

}  // namespace kvcal::cli
