// kvcal train-ae: per (layer[, KV head], K|V) autoencoders trained on captures -> ae.safetensors.
#include <ostream>
#include <string>

#include "cli/command.h"
#include "cli/train_options.h"
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
      ("init", po::value<std::string>(&p.init)->default_value("pca"), "pca | random");
  // clang-format on
  add_train_options(opts, p,
                    {"tokens per step (attn: whole sequences up to this many tokens)",
                     "fraction of the sequences held out for validation",
                     "do not write <stem>.json / <stem>.svg"});
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
  read_train_flags(vm, "train-ae", args, p);
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
