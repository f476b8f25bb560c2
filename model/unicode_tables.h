// Unicode Character Database tables for the tokenizer, generated into model/unicode_tables.cpp by
// scripts/gen_unicode_tables.py. Every table is sorted by code point (compositions by the pair) so
// lookups are binary searches; model/unicode.h is the interface the rest of the code uses.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvcal::unicode_tables {

struct codepoint_range {
  std::uint32_t first, last;  // inclusive
};
struct combining_class_range {
  std::uint32_t first, last;  // inclusive
  std::uint8_t ccc;           // canonical combining class, never 0 here
};
struct decomposition_entry {
  std::uint32_t cp, first, second;  // second == 0 for a singleton decomposition
};
struct composition_entry {
  std::uint32_t first, second, composite;
};

extern const char* const ucd_version;
extern const codepoint_range letter[];      // \p{L}
extern const std::size_t letter_size;
extern const codepoint_range number[];      // \p{N}
extern const std::size_t number_size;
extern const codepoint_range whitespace[];  // \s (White_Space)
extern const std::size_t whitespace_size;
extern const combining_class_range combining_class[];
extern const std::size_t combining_class_size;
extern const decomposition_entry decomposition[];
extern const std::size_t decomposition_size;
extern const composition_entry composition[];
extern const std::size_t composition_size;

}  // namespace kvcal::unicode_tables
