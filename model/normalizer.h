// Normalizers of a tokenizer.json: NFC, Prepend, Replace (string pattern) and Sequence of these.
// Any other type is refused when loading, naming the type, its JSON path and the file.
//
//   kvcal::normalizer n = kvcal::normalizer::from_json(j["normalizer"], {file, "normalizer"});
//   std::string s = n.apply(text);
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer_json.h"

namespace kvcal {

class normalizer {
 public:
  // `j` may be null (no normalizer).
  static normalizer from_json(const tokjson::json& j, const tokjson::context& ctx);
  // `s` must be valid UTF-8.
  std::string apply(std::string_view s) const;
  bool empty() const { return steps_.empty(); }

 private:
  enum class kind { nfc, prepend, replace };
  struct step {
    kind k;
    std::string a, b;  // prepend: a; replace: a -> b
  };
  void parse(const tokjson::json& j, const tokjson::context& ctx);
  std::vector<step> steps_;
};

// Replaces every non-overlapping occurrence of `from` (non-empty) by `to`, left to right.
std::string replace_all(std::string_view s, std::string_view from, std::string_view to);

}  // namespace kvcal
