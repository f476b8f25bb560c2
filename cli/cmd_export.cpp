// kvcal export: assemble a versioned preset file from a template or recipe file and a model.
#include <ostream>
#include <string>

#include "cli/command.h"
#include "presets/preset_export.h"
#include "presets/preset_template.h"
#include "runtime/preset_report.h"

namespace kvcal::cli {

int run_export(const std::vector<std::string>& args, io& io) {
  export_params p;
  std::string templates;
  for (const auto& n : preset_template_names()) templates += (templates.empty() ? "" : ", ") + n;
  po::options_description opts("Options");
  const std::string template_help = "shipped template: " + templates;
  // clang-format off
  opts.add_options()
      ("template", po::value<std::string>(&p.template_name), template_help.c_str())
      ("recipe", po::value<std::string>(&p.recipe_path), "recipe file (docs/formats/preset.md)")
      ("model", po::value<std::string>(&p.model_dir)->required(), "model folder (its config.json)")
      ("out", po::value<std::string>(&p.out)->required(), "preset file to write")
      ("pca", po::value<std::string>(&p.pca), "PCA bases from kvcal fit-pca")
      ("ae", po::value<std::string>(&p.ae), "autoencoder weights from kvcal train-ae")
      ("policy", po::value<std::string>(&p.policy), "eviction policy from kvcal train-policy")
      ("head-budgets", po::value<std::string>(&p.head_budgets),
       "entropy | effective: split each layer's token budget over its KV heads by their "
       "attention entropy measured on --capture")
      ("capture", po::value<std::string>(&p.capture), "capture with attn, for --head-budgets")
      ("context", po::value<std::int64_t>(&p.context)->default_value(32768),
       "context length the stored byte accounting is stated at")
      ("match-ratio", po::value<double>(&p.match_ratio),
       "scale every layer's token budget to reach this ratio vs fp16 at --context");
  // clang-format on
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse_options("export", "--template NAME|--recipe FILE.json --model DIR --out PRESET", opts,
                     pos, args, vm, io))
    return 0;
  if (p.template_name.empty() == p.recipe_path.empty())
    throw usage_error("give exactly one of --template and --recipe");
  if (p.context < 1) throw usage_error("--context must be >= 1");
  if (p.head_budgets.empty() != p.capture.empty())
    throw usage_error("--head-budgets and --capture go together");
  if (vm.count("match-ratio") && p.match_ratio <= 0) throw usage_error("--match-ratio must be > 0");
  const export_result r = export_preset(p);
  io.out << p.out << ": preset '" << r.recipe.name << "' for " << r.recipe.model.model_type << " ("
         << r.recipe.model.n_layers << " layers)\n";
  print_recipe(r.recipe, r.fixed_bytes, {2048, 8192, 32768}, io.out);
  return 0;
}

}  // namespace kvcal::cli
