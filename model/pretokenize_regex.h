// The pre-tokenizer split patterns of GPT-2, Llama-3 and Qwen2, matched by hand.
//
// Hugging Face tokenizers runs these regexes with Oniguruma; kvcal has no regex engine with Unicode
// classes on the GPU machine (no PCRE2 / ICU), and only these three patterns occur in the model
// families it supports. A tokenizer.json with any other pattern is refused (naming the pattern)
// rather than approximated. Semantics reproduced exactly: leftmost-first alternation, greedy
// quantifiers with backtracking (`\s+(?!\S)` leaves the last space of a run for the next word),
// case-insensitive contractions in Llama-3 / Qwen2, \p{L} / \p{N} / \s from the Unicode tables.
//
//   auto p = kvcal::recognise_split_pattern(regex_from_json);   // std::nullopt when unknown
//   for (auto [b, e] : kvcal::find_split_matches(*p, cps)) ...   // [b, e) in code points
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

namespace kvcal {

enum class split_pattern { gpt2, llama3, qwen2 };

// The GPT-2 pattern, which the ByteLevel pre-tokenizer applies when use_regex is true.
extern const char* const gpt2_split_regex;

std::optional<split_pattern> recognise_split_pattern(std::string_view regex);
const char* split_pattern_name(split_pattern p);

// Non-overlapping matches of the pattern, left to right, as [begin, end) code point indices.
// Text between matches is not covered (none arises for these patterns, but callers must not rely
// on it).
std::vector<std::pair<std::size_t, std::size_t>> find_split_matches(split_pattern p,
                                                                    std::u32string_view text);

}  // namespace kvcal
