#include "model/pre_tokenizer.h"

#include <algorithm>
#include <utility>

#include "model/byte_level.h"
#include "model/normalizer.h"
#include "model/unicode.h"

namespace kvcal {
namespace {

struct span {
  std::size_t begin, end;
  bool is_match;
};

// Matches of a known regex as byte offsets into `text`.
std::vector<std::pair<std::size_t, std::size_t>> regex_matches(split_pattern p, const std::string& text) {
  const std::u32string cps = utf8_decode(text, "pre-tokenizer input");
  std::vector<std::size_t> byte_at(cps.size() + 1, 0);  // code point index -> byte offset
  for (std::size_t i = 0; i < cps.size(); ++i) {
    const char32_t c = cps[i];
    byte_at[i + 1] = byte_at[i] + (c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4);
  }
  std::vector<std::pair<std::size_t, std::size_t>> out;
  for (auto [b, e] : find_split_matches(p, cps)) out.emplace_back(byte_at[b], byte_at[e]);
  return out;
}

std::vector<std::pair<std::size_t, std::size_t>> literal_matches(const std::string& text, const std::string& lit) {
  std::vector<std::pair<std::size_t, std::size_t>> out;
  if (lit.empty()) return out;
  for (std::size_t pos = text.find(lit); pos != std::string::npos; pos = text.find(lit, pos + lit.size()))
    out.emplace_back(pos, pos + lit.size());
  return out;
}

// Matches plus the gaps between them, covering the whole text (tokenizers' find_matches).
std::vector<span> cover(const std::vector<std::pair<std::size_t, std::size_t>>& matches, std::size_t size,
                        bool invert) {
  std::vector<span> out;
  std::size_t pos = 0;
  for (auto [b, e] : matches) {
    if (b > pos) out.push_back({pos, b, invert});
    if (e > b) out.push_back({b, e, !invert});
    pos = e;
  }
  if (pos < size) out.push_back({pos, size, invert});
  return out;
}

}  // namespace

pre_tokenizer pre_tokenizer::from_json(const tokjson::json& j, const tokjson::context& ctx) {
  pre_tokenizer p;
  if (!j.is_null()) p.parse(j, ctx);
  return p;
}

void pre_tokenizer::parse(const tokjson::json& j, const tokjson::context& ctx) {
  const std::string type = tokjson::get_type(j, "pre-tokenizer", ctx);
  if (type == "Sequence") {
    const auto& list = tokjson::field(j, "pretokenizers", ctx);
    KVCAL_CHECK(list.is_array(), ctx.file, ": '", ctx.at("pretokenizers").path, "' must be an array");
    for (std::size_t i = 0; i < list.size(); ++i) parse(list[i], ctx.at("pretokenizers").at(i));
  } else if (type == "ByteLevel") {
    step s;
    s.k = kind::byte_level;
    s.add_prefix_space = tokjson::get_bool(j, "add_prefix_space", true, ctx);
    s.use_regex = tokjson::get_bool(j, "use_regex", true, ctx);
    steps_.push_back(s);
  } else if (type == "Split") {
    step s;
    s.k = kind::split;
    bool is_regex = false;
    std::string pattern = tokjson::get_pattern(j, ctx, is_regex);
    if (is_regex) {
      s.regex = recognise_split_pattern(pattern);
      KVCAL_CHECK(s.regex, ctx.file, ": unsupported pre-tokenizer regex at '", ctx.at("pattern").path,
                  "': ", pattern, " (kvcal matches only the GPT-2, Llama-3 and Qwen2 split patterns)");
    } else {
      KVCAL_CHECK(!pattern.empty(), ctx.file, ": '", ctx.at("pattern").path, "' is an empty string");
      s.literal = std::move(pattern);
    }
    const std::string how = tokjson::get_string(j, "behavior", ctx);
    if (how == "Removed") s.how = behavior::removed;
    else if (how == "Isolated") s.how = behavior::isolated;
    else if (how == "MergedWithPrevious") s.how = behavior::merged_with_previous;
    else if (how == "MergedWithNext") s.how = behavior::merged_with_next;
    else if (how == "Contiguous") s.how = behavior::contiguous;
    else KVCAL_FAIL(ctx.file, ": unknown split behavior '", how, "' at '", ctx.at("behavior").path, "'");
    s.invert = tokjson::get_bool(j, "invert", false, ctx);
    steps_.push_back(s);
  } else if (type == "Metaspace") {
    step s;
    s.k = kind::metaspace;
    s.literal = tokjson::get_string(j, "replacement", ctx);
    KVCAL_CHECK(!s.literal.empty(), ctx.file, ": '", ctx.at("replacement").path, "' is empty");
    if (tokjson::has(j, "prepend_scheme")) {
      const std::string scheme = tokjson::get_string(j, "prepend_scheme", ctx);
      if (scheme == "always") s.scheme = prepend::always;
      else if (scheme == "first") s.scheme = prepend::first;
      else if (scheme == "never") s.scheme = prepend::never;
      else KVCAL_FAIL(ctx.file, ": unknown prepend_scheme '", scheme, "' at '", ctx.at("prepend_scheme").path, "'");
    } else {
      // Files written before prepend_scheme existed carry add_prefix_space instead.
      s.scheme = tokjson::get_bool(j, "add_prefix_space", true, ctx) ? prepend::always : prepend::never;
    }
    s.split = tokjson::get_bool(j, "split", true, ctx);
    steps_.push_back(s);
  } else {
    KVCAL_FAIL(ctx.file, ": unsupported pre-tokenizer type '", type, "' at '", ctx.path,
               "' (supported: ByteLevel, Split, Metaspace, Sequence)");
  }
}

std::vector<std::string> pre_tokenizer::apply(const std::string& text, bool at_start) const {
  struct piece {
    std::string text;
    bool at_start;
  };
  std::vector<piece> cur;
  if (!text.empty()) cur.push_back({text, at_start});

  // Cuts one piece at `spans` according to `how` (tokenizers' SplitDelimiterBehavior).
  auto cut = [](const piece& p, const std::vector<span>& spans, behavior how, std::vector<piece>& out) {
    std::vector<std::pair<std::size_t, std::size_t>> parts;
    bool prev_match = false;
    switch (how) {
      case behavior::removed:
        for (const span& s : spans)
          if (!s.is_match) parts.emplace_back(s.begin, s.end);
        break;
      case behavior::isolated:
        for (const span& s : spans) parts.emplace_back(s.begin, s.end);
        break;
      case behavior::merged_with_previous:
        for (const span& s : spans) {
          if (s.is_match && !prev_match && !parts.empty()) parts.back().second = s.end;
          else parts.emplace_back(s.begin, s.end);
          prev_match = s.is_match;
        }
        break;
      case behavior::merged_with_next:
        for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
          if (it->is_match && !prev_match && !parts.empty()) parts.back().first = it->begin;
          else parts.emplace_back(it->begin, it->end);
          prev_match = it->is_match;
        }
        std::reverse(parts.begin(), parts.end());
        break;
      case behavior::contiguous:
        for (std::size_t i = 0; i < spans.size(); ++i) {
          if (i > 0 && spans[i].is_match == prev_match) parts.back().second = spans[i].end;
          else parts.emplace_back(spans[i].begin, spans[i].end);
          prev_match = spans[i].is_match;
        }
        break;
    }
    for (std::size_t i = 0; i < parts.size(); ++i) {
      if (parts[i].second <= parts[i].first) continue;
      out.push_back({p.text.substr(parts[i].first, parts[i].second - parts[i].first),
                     p.at_start && parts[i].first == 0});
    }
  };

  for (const step& st : steps_) {
    std::vector<piece> next;
    for (piece& p : cur) {
      switch (st.k) {
        case kind::byte_level: {
          if (st.add_prefix_space && p.text[0] != ' ') p.text.insert(p.text.begin(), ' ');
          std::vector<piece> parts;
          if (st.use_regex)
            cut(p, cover(regex_matches(split_pattern::gpt2, p.text), p.text.size(), false), behavior::isolated, parts);
          else
            parts.push_back(std::move(p));
          for (piece& q : parts) next.push_back({byte_level_encode(q.text), q.at_start});
          break;
        }
        case kind::split: {
          const auto matches = st.regex ? regex_matches(*st.regex, p.text) : literal_matches(p.text, st.literal);
          cut(p, cover(matches, p.text.size(), st.invert), st.how, next);
          break;
        }
        case kind::metaspace: {
          piece q{replace_all(p.text, " ", st.literal), p.at_start};
          const bool starts = q.text.compare(0, st.literal.size(), st.literal) == 0;
          if (!starts && (st.scheme == prepend::always || (st.scheme == prepend::first && q.at_start)))
            q.text.insert(0, st.literal);
          if (st.split)
            cut(q, cover(literal_matches(q.text, st.literal), q.text.size(), false), behavior::merged_with_next, next);
          else
            next.push_back(std::move(q));
          break;
        }
      }
    }
    cur = std::move(next);
  }
  std::vector<std::string> words;
  words.reserve(cur.size());
  for (piece& p : cur)
    if (!p.text.empty()) words.push_back(std::move(p.text));
  return words;
}

}  // namespace kvcal
