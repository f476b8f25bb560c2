#include "model/byte_level.h"

#include <array>

#include "model/unicode.h"

namespace kvcal {
namespace {

struct tables {
  std::array<char32_t, 256> to_char{};
  std::array<std::string, 256> to_utf8;
  std::array<int, 512> to_byte{};  // mapped characters are all below U+0200
  tables() {
    to_byte.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      to_char[static_cast<std::size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
    }
    for (int b = 0; b < 256; ++b) {
      const char32_t c = to_char[static_cast<std::size_t>(b)];
      utf8_append(to_utf8[static_cast<std::size_t>(b)], c);
      to_byte[c] = b;
    }
  }
};

const tables& get() {
  static const tables t;
  return t;
}

}  // namespace

char32_t byte_level_char(std::uint8_t byte) { return get().to_char[byte]; }

int byte_level_byte(char32_t c) { return c < 512 ? get().to_byte[c] : -1; }

std::string byte_level_encode(std::string_view bytes) {
  const tables& t = get();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += t.to_utf8[b];
  return out;
}

}  // namespace kvcal
