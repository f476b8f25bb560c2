// `kvcal export`: a template or recipe file + a model's config.json (+ calibration files) -> a
// validated preset file.
//
//   kvcal::export_params p;
//   p.template_name = "kivi-2"; p.model_dir = "models/qwen"; p.out = "kivi-2.safetensors";
//   kvcal::export_result r = kvcal::export_preset(p);
#pragma once

#include <cstdint>
#include <string>

#include "runtime/preset_recipe.h"

namespace kvcal {

struct export_params {
  std::string template_name;  // one of template_name / recipe_path
  std::string recipe_path;
  std::string model_dir;  // needs config.json only
  std::string out;
  std::string pca;     // pca.h5 from kvcal fit-pca (presets/preset_pca.h)
  std::string ae;      // ae.safetensors from kvcal train-ae (presets/preset_trained.h)
  std::string policy;  // policy.safetensors from kvcal train-policy
  // Per-KV-head budgets from a capture's attention entropy (presets/preset_head_budgets.h):
  // rule "entropy" | "effective" (empty: none) and the capture (recorded with attn).
  std::string head_budgets;
  std::string capture;
  std::int64_t context = 32768;  // context the stored byte accounting is stated at
  // > 0: every layer's token budget scaled by one factor so that the byte accounting at `context`
  // reaches this ratio vs fp16 (runtime/budget_match.h; the name gets "@<ratio>x").
  double match_ratio = 0;
};

struct export_result {
  preset_recipe recipe;
  double fixed_bytes = 0;
};

export_result export_preset(const export_params& p);

}  // namespace kvcal
