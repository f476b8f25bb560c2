// Unicode helpers for the tokenizer: UTF-8 decoding / encoding, the character classes the
// pre-tokenizer patterns use (\p{L}, \p{N}, \s), and NFC normalization. Plain C++17; the data comes
// from model/unicode_tables.cpp (generated from the Unicode Character Database, no ICU).
//
//   std::u32string cps = kvcal::utf8_decode(text, "tokenizer input");  // throws on invalid UTF-8
//   bool l = kvcal::is_letter(cps[0]);
//   std::string n = kvcal::nfc(text);
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace kvcal {

// Strict decoding: overlong forms, surrogates, code points past U+10FFFF and truncated sequences
// throw kvcal::error naming `what` and the byte offset.
std::u32string utf8_decode(std::string_view bytes, std::string_view what);
void utf8_append(std::string& out, char32_t cp);
std::string utf8_encode(std::u32string_view cps);
// Lossy decoding as Rust's String::from_utf8_lossy (what Hugging Face decoders use): every maximal
// invalid subsequence becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);
// True when `bytes` is well-formed UTF-8.
bool utf8_valid(std::string_view bytes);

bool is_letter(char32_t cp);      // General_Category L (Lu Ll Lt Lm Lo)
bool is_number(char32_t cp);      // General_Category N (Nd Nl No)
bool is_whitespace(char32_t cp);  // White_Space property (what \s matches in Oniguruma)

// Unicode Normalization Form C (canonical decomposition, canonical ordering, canonical
// composition). `text` must be valid UTF-8.
std::string nfc(std::string_view text);

}  // namespace kvcal
