#include "calibrate/capture_format.h"

#include <algorithm>

#include "kernels/common/error.h"

namespace kvcal {

const char* capture_item_name(capture_item it) {
  switch (it) {
    case capture_item::k:
      return "k";
    case capture_item::k_rope:
      return "k_rope";
    case capture_item::v:
      return "v";
    case capture_item::q:
      return "q";
    case capture_item::hidden:
      return "hidden";
    case capture_item::attn:
      return "attn";
  }
  return "?";
}

const std::vector<capture_item>& all_capture_items() {
  static const std::vector<capture_item> all = {capture_item::k,      capture_item::k_rope,
                                                capture_item::v,      capture_item::q,
                                                capture_item::hidden, capture_item::attn};
  return all;
}

std::optional<capture_item> parse_capture_item(const std::string& name) {
  for (capture_item it : all_capture_items())
    if (name == capture_item_name(it)) return it;
  return std::nullopt;
}

std::string capture_layer_path(int layer, const std::string& name) {
  return "/layers/" + std::to_string(layer) + "/" + name;
}

std::vector<std::string> capture_item_datasets(capture_item it) {
  if (it == capture_item::attn) return {"attn_cum", "attn_next", "attn_max"};
  return {capture_item_name(it)};
}

bool capture_header::records(capture_item it) const {
  return std::find(record.begin(), record.end(), it) != record.end();
}

std::vector<std::int64_t> capture_header::inner_shape(const std::string& name) const {
  if (name == "k" || name == "k_rope" || name == "v") return {n_kv_heads, head_dim};
  if (name == "q") return {n_heads, head_dim};
  if (name == "hidden") return {hidden_size};
  if (name == "attn_cum" || name == "attn_next" || name == "attn_max") return {n_kv_heads};
  KVCAL_FAIL("unknown capture dataset '", name, "'");
}

}  // namespace kvcal
