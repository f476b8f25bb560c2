#include "presets/preset_export.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "calibrate/attention_entropy.h"
#include "kernels/common/error.h"
#include "presets/preset_head_budgets.h"
#include "presets/preset_pca.h"
#include "presets/preset_template.h"
#include "presets/preset_trained.h"
#include "presets/preset_writer.h"
#include "runtime/budget_match.h"
#include "runtime/preset.h"

namespace kvcal {

namespace {

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  KVCAL_CHECK(f.good(), path, ": cannot open the recipe file");
  std::ostringstream os;
  os << f.rdbuf();
  try {
    return nlohmann::json::parse(os.str());
  } catch (const nlohmann::json::exception& e) {
    KVCAL_FAIL(path, ": malformed JSON: ", e.what());
  }
}

}  // namespace

export_result export_preset(const export_params& p) {
  KVCAL_CHECK(p.template_name.empty() != p.recipe_path.empty(),
              "export: give exactly one of a template and a recipe file");
  KVCAL_CHECK(!p.out.empty(), "export: no output path");

  const std::string config_path = p.model_dir + "/config.json";
  const model_config cfg = read_model_config(config_path);
  const std::string source =
      p.template_name.empty() ? p.recipe_path : "template '" + p.template_name + "'";
  const nlohmann::json j =
      p.template_name.empty() ? read_json_file(p.recipe_path) : preset_template(p.template_name);
  recipe_parse_options lenient;
  lenient.allow_unset_rank = true;
  export_result r;
  r.recipe = expand_recipe(j, cfg, source, lenient);
  // PCA bases from kvcal fit-pca (presets/preset_pca.h): fills ranks left at 0 by the template.
  preset_pca_tensors pca;
  if (!p.pca.empty()) pca = apply_pca_file(r.recipe, read_pca_file(p.pca), p.pca, cfg, config_path);
  // Trained weights (presets/preset_trained.h): AE latents and policy shapes come from the files.
  preset_trained_tensors ae, policy;
  if (!p.ae.empty()) ae = apply_ae_file(r.recipe, p.ae, cfg, config_path);
  if (!p.policy.empty()) policy = apply_policy_file(r.recipe, p.policy, cfg, config_path);
  calibration_needs needs = needs_of(r.recipe);
  needs.pca = needs.pca && p.pca.empty();
  needs.ae = needs.ae && p.ae.empty();
  needs.policy = needs.policy && p.policy.empty();
  KVCAL_CHECK(!needs.any(), source, " needs calibrated tensors: ", needs.describe(),
              "; export refuses without them");
  // Per-head budgets split each layer's total by the heads' attention entropy.
  KVCAL_CHECK(p.head_budgets.empty() == p.capture.empty(),
              "export: --head-budgets and --capture go together");
  if (!p.head_budgets.empty())
    split_head_budgets(r.recipe, attention_entropy(capture_reader(p.capture)),
                       parse_head_budget_rule(p.head_budgets), p.capture);
  // Budgets matched to a ratio once every method is known (ranks, latents count in the bytes).
  if (p.match_ratio > 0) r.recipe = match_ratio(r.recipe, p.context, p.match_ratio).recipe;
  r.fixed_bytes = pca.bytes + ae.bytes + policy.bytes;
  std::vector<tensor_out> tensors = pca.tensors;
  tensors.insert(tensors.end(), ae.tensors.begin(), ae.tensors.end());
  tensors.insert(tensors.end(), policy.tensors.begin(), policy.tensors.end());
  write_preset(p.out, r.recipe, tensors, p.context);
  return r;
}

}  // namespace kvcal
