#include "kernels/cpu/bitpack.h"

#include <cstring>

#include "kernels/common/error.h"

namespace kvcal {

void pack_bits(const std::uint8_t* codes, std::size_t n, int bits, std::uint8_t* out) {
  KVCAL_ASSERT(bits >= 1 && bits <= 8, "pack_bits: bits ", bits);
  std::memset(out, 0, packed_bytes(n, bits));
  if (bits == 8) {
    std::memcpy(out, codes, n);
    return;
  }
  const unsigned mask = (1u << bits) - 1u;
  for (std::size_t i = 0; i < n; ++i) put_bits(out, i, bits, codes[i] & mask);
}

void unpack_bits(const std::uint8_t* packed, std::size_t first, std::size_t n, int bits,
                 std::uint8_t* codes) {
  KVCAL_ASSERT(bits >= 1 && bits <= 8, "unpack_bits: bits ", bits);
  if (bits == 8) {
    std::memcpy(codes, packed + first, n);
    return;
  }
  for (std::size_t i = 0; i < n; ++i)
    codes[i] = static_cast<std::uint8_t>(get_bits(packed, first + i, bits));
}

}  // namespace kvcal
