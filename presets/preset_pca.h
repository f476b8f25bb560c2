// `kvcal export --pca pca.h5`: PCA bases from kvcal fit-pca (calibrate/pca_format.h) into a preset.
//
// For every layer / KV head whose K or V method is pca, the block of the same layer and head
// (pre-RoPE "k" for K, "v" for V; the shared block under granularity "layer") gives
//   layers.<l>.<k|v>.heads.<h>.pca.basis  [rank, d] F32, rows = the first `rank` principal axes
//   layers.<l>.<k|v>.heads.<h>.pca.mean   [d]       F32 (zeros when fitted uncentred)
// A rank left at 0 by the template takes the rank chosen by fit-pca (per head: heads whose ranks
// differ get per-head overrides); a rank set by the recipe is kept (it must be <= head_dim).
//
//   kvcal::preset_pca_tensors t = kvcal::apply_pca_file(recipe, kvcal::read_pca_file(path), path,
//                                                       cfg, cfg_path);
//   kvcal::write_preset(out, recipe, t.tensors);
#pragma once

#include <deque>
#include <string>
#include <vector>

#include "calibrate/pca_format.h"
#include "runtime/io/safetensors.h"
#include "runtime/model_config.h"
#include "runtime/preset_recipe.h"

namespace kvcal {

struct preset_pca_tensors {
  std::deque<std::vector<float>> storage;  // owns what tensors point at
  std::vector<tensor_out> tensors;
  double bytes = 0;
};

// Refuses a PCA file fitted on another model (naming the field), fills unset ranks, and returns
// the tensors. Errors name `pca_path`.
preset_pca_tensors apply_pca_file(preset_recipe& r, const pca_file& f, const std::string& pca_path,
                                  const model_config& cfg, const std::string& config_path);

}  // namespace kvcal
