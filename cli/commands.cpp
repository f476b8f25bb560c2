// The one place subcommands are registered. A subcommand lands by adding its cli/cmd_<name>.cpp
// and pointing its entry here at the function it defines.
#include "cli/command.h"

namespace kvcal::cli {

int run_inspect(const std::vector<std::string>& args, io& io);
int run_capture(const std::vector<std::string>& args, io& io);
int run_export(const std::vector<std::string>& args, io& io);
int run_fit_pca(const std::vector<std::string>& args, io& io);
int run_eval(const std::vector<std::string>& args, io& io);
int run_generate(const std::vector<std::string>& args, io& io);
int run_train_ae(const std::vector<std::string>& args, io& io);
int run_train_policy(const std::vector<std::string>& args, io& io);
int run_bench(const std::vector<std::string>& args, io& io);

const std::vector<command>& commands() {
  static const std::vector<command> table = {
      {"capture", "run a model and stream its KV activations into an HDF5 capture", run_capture,
       nullptr},
      {"fit-pca", "fit per-(layer, KV head) PCA bases from captures", run_fit_pca, nullptr},
      {"train-ae", "train KV autoencoders on captures", run_train_ae, nullptr},
      {"train-policy", "train a learned eviction policy on captures", run_train_policy,
       nullptr},
      {"export", "assemble a versioned preset file", run_export, nullptr},
      {"inspect", "describe a kvcal file (safetensors / preset / capture / pca)", run_inspect,
       nullptr},
      {"eval", "measure quality (PPL, passkey) through a compressed cache", run_eval, nullptr},
      {"bench", "decode attention speed of presets through the CUDA kernels vs torch SDPA",
       run_bench, nullptr},
      {"generate", "generate text with a (compressed) KV cache", run_generate, nullptr},
  };
  return table;
}

const command* find_command(const std::string& name) {
  for (const auto& c : commands())
    if (name == c.name) return &c;
  return nullptr;
}

}  // namespace kvcal::cli
