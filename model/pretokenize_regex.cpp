// Hand-written matchers for the three known split patterns (see pretokenize_regex.h).
#include "model/pretokenize_regex.h"

#include "model/unicode.h"

namespace kvcal {

const char* const gpt2_split_regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

namespace {

const char* const llama3_regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const qwen2_regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

bool is_other(char32_t c) { return !is_whitespace(c) && !is_letter(c) && !is_number(c); }
bool is_crlf(char32_t c) { return c == '\r' || c == '\n'; }

// Simple case folding of the letters the contractions use; U+017F LATIN SMALL LETTER LONG S folds
// to 's' in Unicode, and Oniguruma's (?i) honours that.
char32_t fold(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c == 0x17F) return 's';
  return c;
}

// 's 't 're 've 'm 'll 'd at position i; returns the match length or 0.
std::size_t contraction(std::u32string_view s, std::size_t i, bool ignore_case) {
  if (s[i] != '\'' || i + 1 >= s.size()) return 0;
  auto f = [&](char32_t c) { return ignore_case ? fold(c) : c; };
  const char32_t a = f(s[i + 1]);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 >= s.size()) return 0;
  const char32_t b = f(s[i + 2]);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

// ` ?X+`: an optional literal space, then a maximal run of class X (never containing ' ').
template <typename Pred>
std::size_t space_then_run(std::u32string_view s, std::size_t i, Pred pred) {
  std::size_t k = i;
  if (s[k] == ' ') ++k;
  if (k >= s.size() || !pred(s[k])) return 0;
  while (k < s.size() && pred(s[k])) ++k;
  return k - i;
}

// `\s+(?!\S)|\s+` at a whitespace character: a run followed by a non-space gives back its last
// character (unless the run is one character, where the plain `\s+` takes it).
std::size_t trailing_space(std::u32string_view s, std::size_t i) {
  std::size_t j = i;
  while (j < s.size() && is_whitespace(s[j])) ++j;
  if (j == s.size() || j - i == 1) return j - i;
  return j - i - 1;
}

std::size_t match_gpt2(std::u32string_view s, std::size_t i) {
  if (std::size_t n = contraction(s, i, false)) return n;
  if (std::size_t n = space_then_run(s, i, is_letter)) return n;
  if (std::size_t n = space_then_run(s, i, is_number)) return n;
  if (std::size_t n = space_then_run(s, i, is_other)) return n;
  if (is_whitespace(s[i])) return trailing_space(s, i);
  return 0;
}

std::size_t match_llama3_qwen2(std::u32string_view s, std::size_t i, std::size_t max_digits) {
  const char32_t c = s[i];
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)
  if (std::size_t n = contraction(s, i, true)) return n;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  {
    std::size_t k = i;
    if (!is_crlf(c) && !is_letter(c) && !is_number(c) && k + 1 < s.size() && is_letter(s[k + 1])) ++k;
    if (is_letter(s[k])) {
      while (k < s.size() && is_letter(s[k])) ++k;
      return k - i;
    }
  }
  // \p{N}{1,3} (Llama-3) or \p{N} (Qwen2)
  if (is_number(c)) {
    std::size_t k = i;
    while (k < s.size() && k - i < max_digits && is_number(s[k])) ++k;
    return k - i;
  }
  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  if (std::size_t n = space_then_run(s, i, is_other)) {
    std::size_t k = i + n;
    while (k < s.size() && is_crlf(s[k])) ++k;
    return k - i;
  }
  if (!is_whitespace(c)) return 0;
  // \s*[\r\n]+ : greedy \s* backs off to the last CR/LF of the whitespace run.
  {
    std::size_t j = i;
    while (j < s.size() && is_whitespace(s[j])) ++j;
    for (std::size_t k = j; k > i; --k) {
      if (is_crlf(s[k - 1])) return k - i;
    }
  }
  return trailing_space(s, i);
}

}  // namespace

std::optional<split_pattern> recognise_split_pattern(std::string_view regex) {
  if (regex == gpt2_split_regex) return split_pattern::gpt2;
  if (regex == llama3_regex) return split_pattern::llama3;
  if (regex == qwen2_regex) return split_pattern::qwen2;
  return std::nullopt;
}

const char* split_pattern_name(split_pattern p) {
  switch (p) {
    case split_pattern::gpt2: return "gpt2";
    case split_pattern::llama3: return "llama3";
    case split_pattern::qwen2: return "qwen2";
  }
  return "unknown";
}

std::vector<std::pair<std::size_t, std::size_t>> find_split_matches(split_pattern p,
                                                                    std::u32string_view text) {
  std::vector<std::pair<std::size_t, std::size_t>> out;
  for (std::size_t i = 0; i < text.size();) {
    std::size_t n = 0;
    switch (p) {
      case split_pattern::gpt2: n = match_gpt2(text, i); break;
      case split_pattern::llama3: n = match_llama3_qwen2(text, i, 3); break;
      case split_pattern::qwen2: n = match_llama3_qwen2(text, i, 1); break;
    }
    if (n == 0) {
      ++i;  // no match starts here: the regex engine moves on one character
      continue;
    }
    out.emplace_back(i, i + n);
    i += n;
  }
  return out;
}

}  // namespace kvcal
