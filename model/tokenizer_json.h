// Field access for tokenizer.json with errors that name the file and the JSON path of the field.
//
//   const json& t = tokjson::field(j, "model", ctx);         // ctx = {file, "model"}
//   std::string type = tokjson::get_string(t, "type", ctx);
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "kernels/common/error.h"

namespace kvcal::tokjson {

using json = nlohmann::json;

// Where a JSON object lives: the file and the path to it ("pre_tokenizer.pretokenizers[1]").
struct context {
  std::string file;
  std::string path;
  context at(const std::string& key) const { return {file, path.empty() ? key : path + "." + key}; }
  context at(std::size_t i) const { return {file, path + "[" + std::to_string(i) + "]"}; }
};

inline const json& field(const json& j, const char* key, const context& ctx) {
  KVCAL_CHECK(j.is_object(), ctx.file, ": '", ctx.path, "' must be a JSON object");
  auto it = j.find(key);
  KVCAL_CHECK(it != j.end(), ctx.file, ": '", ctx.at(key).path, "' is missing");
  return *it;
}

inline bool has(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && !j.at(key).is_null();
}

inline std::string get_string(const json& j, const char* key, const context& ctx) {
  const json& v = field(j, key, ctx);
  KVCAL_CHECK(v.is_string(), ctx.file, ": '", ctx.at(key).path, "' must be a string, got ", v.type_name());
  return v.get<std::string>();
}

inline bool get_bool(const json& j, const char* key, bool fallback, const context& ctx) {
  if (!has(j, key)) return fallback;
  const json& v = j.at(key);
  KVCAL_CHECK(v.is_boolean(), ctx.file, ": '", ctx.at(key).path, "' must be true or false, got ", v.type_name());
  return v.get<bool>();
}

inline long long get_int(const json& j, const char* key, long long fallback, const context& ctx) {
  if (!has(j, key)) return fallback;
  const json& v = j.at(key);
  KVCAL_CHECK(v.is_number_integer(), ctx.file, ": '", ctx.at(key).path, "' must be an integer, got ",
              v.type_name());
  return v.get<long long>();
}

// The "type" of a component; `what` is "normalizer", "pre-tokenizer", ... for the message.
inline std::string get_type(const json& j, const char* what, const context& ctx) {
  KVCAL_CHECK(j.is_object(), ctx.file, ": ", what, " '", ctx.path, "' must be a JSON object");
  return get_string(j, "type", ctx);
}

// A "pattern" object: {"String": "..."} or {"Regex": "..."}. Sets is_regex.
inline std::string get_pattern(const json& j, const context& ctx, bool& is_regex) {
  const json& p = field(j, "pattern", ctx);
  const context pc = ctx.at("pattern");
  if (has(p, "String")) {
    is_regex = false;
    return get_string(p, "String", pc);
  }
  if (has(p, "Regex")) {
    is_regex = true;
    return get_string(p, "Regex", pc);
  }
  KVCAL_FAIL(ctx.file, ": '", pc.path, "' must be {\"String\": ...} or {\"Regex\": ...}");
}

}  // namespace kvcal::tokjson
