// The GPU packed cache's options (model/gpu_packed_cache.h) for a preset: the kernels'
// configuration of its recipe (runtime/packed_support.h packed_config_of) plus what the cache
// uploads from its tensors once (the learned scorer's weights, the V and K latent maps). Refuses,
// naming `source` and the reason, a preset the kernels cannot run. Used by `kvcal eval
// --gpu-kernels` and the tests, so both build the cache the same way.
//
//   kvcal::preset_file f(path);
//   auto o = kvcal::gpu_packed_options_of(f.recipe(), f.tensors().tensors(), path, device);
//   kvcal::gpu_packed_cache cache(cfg, batch, capacity, o, device);
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "model/gpu_packed_cache.h"
#include "runtime/io/safetensors.h"
#include "runtime/preset_recipe.h"

namespace kvcal {

gpu_packed_cache::options gpu_packed_options_of(const preset_recipe& r,
                                                const std::vector<tensor_view>& tensors,
                                                const std::string& source, at::Device device);

}  // namespace kvcal
