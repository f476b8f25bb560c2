#include "presets/preset_writer.h"

#include <nlohmann/json.hpp>

#include "kernels/common/error.h"
#include "runtime/byte_accounting.h"
#include "runtime/preset.h"

namespace kvcal {

nlohmann::json accounting_to_json(const preset_recipe& r, std::int64_t context,
                                  double fixed_bytes) {
  const byte_accounting a = account_bytes(r, context, fixed_bytes);
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& l : a.layers)
    layers.push_back({{"retained_tokens", l.retained},
                      {"k_bytes", l.k.total()},
                      {"v_bytes", l.v.total()},
                      {"index_bytes", l.indices}});
  return {{"context", context},
          {"bytes", a.total()},
          {"bytes_per_token", a.bytes_per_token()},
          {"fp16_bytes", a.fp16_bytes},
          {"ratio_vs_fp16", a.ratio()},
          {"retained_fraction", a.retained_fraction()},
          {"upper_bound", a.upper_bound},
          {"fixed_bytes", fixed_bytes},
          {"layers", layers}};
}

void write_preset(const std::string& path, const preset_recipe& r,
                  const std::vector<tensor_out>& tensors, std::int64_t context) {
  KVCAL_CHECK(context >= 1, path, ": accounting context ", context, " must be >= 1");
  // Round trip through the stored form: a hand-built recipe gets the reader's validation.
  const nlohmann::json j = recipe_to_json(r);
  const preset_recipe checked = parse_recipe(j, path);
  std::vector<tensor_view> views;
  double fixed = 0;
  for (const auto& t : tensors) {
    tensor_view v;
    v.name = t.name;
    v.dtype = t.dtype;
    v.shape = t.shape;
    v.data = static_cast<const std::uint8_t*>(t.data);
    v.nbytes = static_cast<std::size_t>(v.numel()) * dtype_size(t.dtype);
    fixed += static_cast<double>(v.nbytes);
    views.push_back(v);
  }
  check_preset_tensors(checked, views, path);
  write_safetensors(path, tensors,
                    {{preset_metadata_key, j.dump()},
                     {preset_accounting_key, accounting_to_json(checked, context, fixed).dump()}});
}

}  // namespace kvcal
