// `kvcal export --ae ae.safetensors` / `--policy policy.safetensors`: weights from kvcal train-ae
// (docs/formats/ae.md) and kvcal train-policy (docs/formats/policy.md) into a preset.
//
// AE: every layer / KV head whose K or V method is `ae` takes
//   layers.<l>.<k|v>.heads.<h>.ae.{encoder,decoder}.{weight,bias}   F32, names as in the preset
// from the file, and for an `--arch mlp` file also
//   layers.<l>.<k|v>.heads.<h>.ae.{encoder,decoder}.mlp.{fc1.weight,fc1.bias,fc2.weight}
// A latent left at 0 by the template takes the file's, a latent set by the recipe must equal it;
// the architecture is the file's (ae.hidden = its hidden width, 0 for linear; a recipe that sets
// hidden must match it).
// Policy: every layer whose policy is `learned` takes layers.<l>.policy.weight / .bias (linear)
// or .fc1 / .fc2 (one hidden layer, ReLU); mlp_hidden and in_dim come from the file, the
// recipe's features must match the file's. Policies with two or more hidden layers (h2o-label's
// default [128, 64]) cannot be expressed by the preset and are refused.
//
//   kvcal::preset_trained_tensors t = kvcal::apply_ae_file(recipe, "ae.safetensors", cfg,
//   cfg_path);
#pragma once

#include <deque>
#include <string>
#include <vector>

#include "runtime/io/safetensors.h"
#include "runtime/model_config.h"
#include "runtime/preset_recipe.h"

namespace kvcal {

struct preset_trained_tensors {
  std::deque<std::vector<float>> storage;  // owns what tensors point at
  std::vector<tensor_out> tensors;
  double bytes = 0;
};

// Errors name the file (and the layer / head / tensor).
preset_trained_tensors apply_ae_file(preset_recipe& r, const std::string& ae_path,
                                     const model_config& cfg, const std::string& config_path);
preset_trained_tensors apply_policy_file(preset_recipe& r, const std::string& policy_path,
                                         const model_config& cfg, const std::string& config_path);

}  // namespace kvcal
