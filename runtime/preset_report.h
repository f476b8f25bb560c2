// Human-readable description of a kvcal preset (used by `kvcal inspect`): the model it is for,
// the recipe as one row per layer, and the byte accounting at several context lengths.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "runtime/preset_recipe.h"

namespace kvcal {

// Reads and validates the preset at `path`, then prints it.
void describe_preset(const std::string& path, std::ostream& out);

// The per-layer table and the accounting table for a recipe (`fixed_bytes`: its tensors).
void print_recipe(const preset_recipe& r, double fixed_bytes,
                  const std::vector<std::int64_t>& contexts, std::ostream& out);

// "2-bit per-channel g32 asym", "pca r96 int8", "fp16".
std::string describe_method(const kv_method& m);

}  // namespace kvcal
