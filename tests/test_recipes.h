// Hand-made recipes for tests: every layer the same K / V method and residual.
#pragma once

#include <cstdint>

#include "runtime/model_config.h"
#include "runtime/preset_recipe.h"

namespace kvcal::test {

inline preset_recipe recipe_for(const model_config& cfg, const kv_method& k, const kv_method& v,
                                std::int64_t residual) {
  preset_recipe r;
  r.name = "test";
  r.model = fingerprint_of(cfg);
  r.layers.resize(static_cast<std::size_t>(cfg.num_hidden_layers));
  for (auto& l : r.layers) {
    l.k = k;
    l.v = v;
    l.residual = residual;
  }
  return r;
}

// Asymmetric quantization with `bits` bits, `group` elements per scale, along `axis`.
inline kv_method quant(int bits, int group, quant_axis axis) {
  kv_method m;
  m.kind = kv_method_kind::quant;
  m.quant = {bits, group, axis, false};
  return m;
}

}  // namespace kvcal::test
