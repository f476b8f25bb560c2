// GPT-2's byte-to-unicode mapping (ByteLevel pre-tokenizer and decoder): every byte becomes a
// printable character so that BPE runs on text. Bytes 33-126, 161-172 and 174-255 map to the same
// code point; the other 68 map, in order, to U+0100 and up.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace kvcal {

char32_t byte_level_char(std::uint8_t byte);
int byte_level_byte(char32_t c);  // the byte of a mapped character, or -1
// Maps every byte of `bytes` to its character, UTF-8 encoded.
std::string byte_level_encode(std::string_view bytes);

}  // namespace kvcal
