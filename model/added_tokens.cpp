#include "model/added_tokens.h"

#include <algorithm>

#include "model/unicode.h"

namespace kvcal {
namespace {

bool is_word_char(char32_t c) { return c == '_' || is_letter(c) || is_number(c); }

// Last / first code point of a valid UTF-8 string (0 when empty).
char32_t last_char(std::string_view s) {
  if (s.empty()) return 0;
  std::size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return utf8_decode(s.substr(i), "text")[0];
}
char32_t first_char(std::string_view s) {
  if (s.empty()) return 0;
  std::size_t n = 1;
  while (n < s.size() && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) ++n;
  return utf8_decode(s.substr(0, n), "text")[0];
}
std::size_t char_len(std::string_view s) {
  std::size_t n = 1;
  while (n < s.size() && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) ++n;
  return n;
}

}  // namespace

added_vocabulary::added_vocabulary(std::vector<added_token> tokens, std::vector<std::string> match_text)
    : tokens_(std::move(tokens)), match_(std::move(match_text)) {
  for (std::size_t i = 0; i < tokens_.size(); ++i) {
    if (match_[i].empty()) continue;
    by_first_byte_[static_cast<unsigned char>(match_[i][0])].push_back(i);
  }
  for (auto& list : by_first_byte_) {
    std::stable_sort(list.begin(), list.end(),
                     [&](std::size_t a, std::size_t b) { return match_[a].size() > match_[b].size(); });
  }
}

std::vector<added_vocabulary::segment> added_vocabulary::split(std::string_view text, bool normalized_tokens) const {
  std::vector<segment> out;
  std::size_t done = 0;  // end of the last token (text before it was emitted)
  std::size_t pos = 0;
  while (pos < text.size()) {
    const added_token* hit = nullptr;
    std::size_t hit_len = 0;
    for (std::size_t i : by_first_byte_[static_cast<unsigned char>(text[pos])]) {
      if (tokens_[i].normalized != normalized_tokens) continue;
      const std::string& m = match_[i];
      if (text.compare(pos, m.size(), m) == 0) {
        hit = &tokens_[i];
        hit_len = m.size();
        break;  // longest first
      }
    }
    if (!hit) {
      pos += char_len(text.substr(pos));
      continue;
    }
    std::size_t start = pos, stop = pos + hit_len;
    if (hit->single_word &&
        ((start > 0 && is_word_char(last_char(text.substr(0, start)))) ||
         (stop < text.size() && is_word_char(first_char(text.substr(stop)))))) {
      pos = stop;  // the match is consumed but discarded, as the Aho-Corasick iteration does
      continue;
    }
    if (hit->lstrip) {
      while (start > done) {
        std::size_t b = start - 1;
        while (b > done && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
        if (!is_whitespace(first_char(text.substr(b, start - b)))) break;
        start = b;
      }
    }
    if (hit->rstrip) {
      while (stop < text.size()) {
        const std::size_t n = char_len(text.substr(stop));
        if (!is_whitespace(first_char(text.substr(stop, n)))) break;
        stop += n;
      }
    }
    if (start > done) out.push_back({done, start, -1});
    out.push_back({start, stop, hit->id});
    done = pos = stop;
  }
  if (done < text.size()) out.push_back({done, text.size(), -1});
  return out;
}

}  // namespace kvcal
