#include "model/normalizer.h"

#include "model/unicode.h"

namespace kvcal {

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  std::size_t pos = 0;
  while (true) {
    const std::size_t hit = s.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(s.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(s.substr(pos));
  return out;
}

normalizer normalizer::from_json(const tokjson::json& j, const tokjson::context& ctx) {
  normalizer n;
  if (!j.is_null()) n.parse(j, ctx);
  return n;
}

void normalizer::parse(const tokjson::json& j, const tokjson::context& ctx) {
  const std::string type = tokjson::get_type(j, "normalizer", ctx);
  if (type == "Sequence") {
    const auto& list = tokjson::field(j, "normalizers", ctx);
    KVCAL_CHECK(list.is_array(), ctx.file, ": '", ctx.at("normalizers").path, "' must be an array");
    for (std::size_t i = 0; i < list.size(); ++i) parse(list[i], ctx.at("normalizers").at(i));
  } else if (type == "NFC") {
    steps_.push_back({kind::nfc, {}, {}});
  } else if (type == "Prepend") {
    steps_.push_back({kind::prepend, tokjson::get_string(j, "prepend", ctx), {}});
  } else if (type == "Replace") {
    bool is_regex = false;
    std::string pattern = tokjson::get_pattern(j, ctx, is_regex);
    KVCAL_CHECK(!is_regex, ctx.file, ": '", ctx.path, "': Replace normalizer with a regex pattern (",
                pattern, ") is not supported; only string patterns are");
    KVCAL_CHECK(!pattern.empty(), ctx.file, ": '", ctx.path, "': Replace normalizer with an empty pattern");
    steps_.push_back({kind::replace, std::move(pattern), tokjson::get_string(j, "content", ctx)});
  } else {
    KVCAL_FAIL(ctx.file, ": unsupported normalizer type '", type, "' at '", ctx.path,
               "' (supported: NFC, Prepend, Replace, Sequence)");
  }
}

std::string normalizer::apply(std::string_view s) const {
  std::string cur(s);
  for (const step& st : steps_) {
    switch (st.k) {
      case kind::nfc: cur = nfc(cur); break;
      case kind::prepend:
        if (!cur.empty()) cur = st.a + cur;  // tokenizers prepends only to non-empty strings
        break;
      case kind::replace: cur = replace_all(cur, st.a, st.b); break;
    }
  }
  return cur;
}

}  // namespace kvcal
