// Writes a kvcal preset (layout: runtime/preset.h, docs/formats/preset.md): the recipe and the
// byte accounting into `__metadata__`, the tensors the recipe needs into the safetensors body.
// Everything is validated before a byte is written, and the file appears atomically.
//
//   kvcal::write_preset("kivi-2.safetensors", recipe, {}, 32768);
//   kvcal::write_preset("pca.safetensors", recipe,
//                       {{"layers.0.v.heads.0.pca.basis", kvcal::st_dtype::F32, {96, 128}, p}});
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "runtime/io/safetensors.h"
#include "runtime/preset_recipe.h"

namespace kvcal {

// The accounting stored next to the recipe (informational; readers recompute it).
nlohmann::json accounting_to_json(const preset_recipe& r, std::int64_t context,
                                  double fixed_bytes);

// Validates `r` (as a reader would) and `tensors` against it, then writes `path` atomically.
// `context` is the context length the stored accounting is stated at.
void write_preset(const std::string& path, const preset_recipe& r,
                  const std::vector<tensor_out>& tensors, std::int64_t context = 32768);

}  // namespace kvcal
