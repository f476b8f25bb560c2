#include "model/token_decoder.h"

#include "model/byte_level.h"
#include "model/normalizer.h"
#include "model/unicode.h"

namespace kvcal {
namespace {

// Parses "<0xNN>"; returns -1 for anything else.
int byte_token(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = t[static_cast<std::size_t>(i)];
    v *= 16;
    if (c >= '0' && c <= '9') v += c - '0';
    else if (c >= 'A' && c <= 'F') v += c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') v += c - 'a' + 10;
    else return -1;
  }
  return v;
}

std::vector<std::string> byte_level(const std::vector<std::string>& tokens) {
  std::string bytes;
  for (const std::string& t : tokens) {
    // A token whose characters are not all byte-level characters (an added token such as
    // "<｜begin▁of▁sentence｜>") contributes its own UTF-8 bytes, as in tokenizers.
    const std::u32string cps = utf8_decode(utf8_lossy(t), "token");
    std::string mapped;
    bool all = true;
    for (char32_t c : cps) {
      const int b = byte_level_byte(c);
      if (b < 0) {
        all = false;
        break;
      }
      mapped.push_back(static_cast<char>(b));
    }
    bytes += all ? mapped : t;
  }
  return {utf8_lossy(bytes)};
}

std::vector<std::string> byte_fallback(const std::vector<std::string>& tokens) {
  std::vector<std::string> out;
  std::string pending;
  auto flush = [&] {
    if (pending.empty()) return;
    if (utf8_valid(pending)) {
      out.push_back(pending);
    } else {
      for (std::size_t i = 0; i < pending.size(); ++i) out.emplace_back("\xEF\xBF\xBD");  // one U+FFFD per byte
    }
    pending.clear();
  };
  for (const std::string& t : tokens) {
    const int b = byte_token(t);
    if (b >= 0) {
      pending.push_back(static_cast<char>(b));
    } else {
      flush();
      out.push_back(t);
    }
  }
  flush();
  return out;
}

std::vector<std::string> strip(std::vector<std::string> tokens, char32_t c, std::size_t start, std::size_t stop) {
  for (std::string& t : tokens) {
    const std::u32string cps = utf8_decode(utf8_lossy(t), "token");
    std::size_t b = 0, e = cps.size();
    while (b < start && b < e && cps[b] == c) ++b;
    for (std::size_t n = 0; n < stop && e > b && cps[e - 1] == c; ++n) --e;
    t = utf8_encode(std::u32string_view(cps).substr(b, e - b));
  }
  return tokens;
}

}  // namespace

token_decoder token_decoder::from_json(const tokjson::json& j, const tokjson::context& ctx) {
  token_decoder d;
  if (!j.is_null()) {
    d.present_ = true;
    d.parse(j, ctx);
  }
  return d;
}

void token_decoder::parse(const tokjson::json& j, const tokjson::context& ctx) {
  const std::string type = tokjson::get_type(j, "decoder", ctx);
  if (type == "Sequence") {
    const auto& list = tokjson::field(j, "decoders", ctx);
    KVCAL_CHECK(list.is_array(), ctx.file, ": '", ctx.at("decoders").path, "' must be an array");
    for (std::size_t i = 0; i < list.size(); ++i) parse(list[i], ctx.at("decoders").at(i));
  } else if (type == "ByteLevel") {
    steps_.push_back(make_step(kind::byte_level));
  } else if (type == "Replace") {
    bool is_regex = false;
    std::string pattern = tokjson::get_pattern(j, ctx, is_regex);
    KVCAL_CHECK(!is_regex, ctx.file, ": '", ctx.path, "': Replace decoder with a regex pattern (", pattern,
                ") is not supported; only string patterns are");
    KVCAL_CHECK(!pattern.empty(), ctx.file, ": '", ctx.path, "': Replace decoder with an empty pattern");
    step s = make_step(kind::replace);
    s.a = std::move(pattern);
    s.b = tokjson::get_string(j, "content", ctx);
    steps_.push_back(s);
  } else if (type == "ByteFallback") {
    steps_.push_back(make_step(kind::byte_fallback));
  } else if (type == "Fuse") {
    steps_.push_back(make_step(kind::fuse));
  } else if (type == "Strip") {
    step s = make_step(kind::strip);
    s.a = tokjson::get_string(j, "content", ctx);
    KVCAL_CHECK(utf8_decode(s.a, ctx.file).size() == 1, ctx.file, ": '", ctx.at("content").path,
                "' must be one character");
    const long long start = tokjson::get_int(j, "start", 0, ctx), stop = tokjson::get_int(j, "stop", 0, ctx);
    KVCAL_CHECK(start >= 0 && stop >= 0, ctx.file, ": '", ctx.path, "': start and stop must not be negative");
    s.start = static_cast<std::size_t>(start);
    s.stop = static_cast<std::size_t>(stop);
    steps_.push_back(s);
  } else if (type == "Metaspace") {
    step s = make_step(kind::metaspace);
    s.a = tokjson::get_string(j, "replacement", ctx);
    KVCAL_CHECK(!s.a.empty(), ctx.file, ": '", ctx.at("replacement").path, "' is empty");
    if (tokjson::has(j, "prepend_scheme"))
      s.prepend = tokjson::get_string(j, "prepend_scheme", ctx) != "never";
    else
      s.prepend = tokjson::get_bool(j, "add_prefix_space", true, ctx);
    steps_.push_back(s);
  } else {
    KVCAL_FAIL(ctx.file, ": unsupported decoder type '", type, "' at '", ctx.path,
               "' (supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence)");
  }
}

std::string token_decoder::decode(std::vector<std::string> tokens) const {
  if (!present_) {
    std::string out;
    for (std::size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const step& st : steps_) {
    switch (st.k) {
      case kind::byte_level: tokens = byte_level(tokens); break;
      case kind::replace:
        for (std::string& t : tokens) t = replace_all(t, st.a, st.b);
        break;
      case kind::byte_fallback: tokens = byte_fallback(tokens); break;
      case kind::fuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens = {all};
        break;
      }
      case kind::strip: tokens = strip(std::move(tokens), utf8_decode(st.a, "Strip content")[0], st.start, st.stop); break;
      case kind::metaspace:
        // tokenizers turns every replacement character into a space, except in the first token when a
        // prefix was prepended, where it drops them.
        for (std::size_t i = 0; i < tokens.size(); ++i)
          tokens[i] = replace_all(tokens[i], st.a, (i == 0 && st.prepend) ? "" : " ");
        break;
    }
  }
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

}  // namespace kvcal
