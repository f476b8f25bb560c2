// Dense bit packing of small unsigned codes (1..8 bits), the storage of quantized KV caches.
//
// Layout: one little-endian bit stream. Code i occupies bits [i*bits, (i+1)*bits) of the buffer,
// least significant bit first (bit b of the stream is bit b % 8 of byte b / 8). Nothing is padded
// between codes, so n codes take exactly ceil(n * bits / 8) bytes:
//   2-bit: 4 codes per byte; 4-bit: 2 per byte (low nibble first); 8-bit: one byte each;
//   3-bit: 8 codes in 3 bytes (a code may straddle a byte boundary). A 3-bit row of head_dim 128
//   is 48 bytes. We chose the plain stream over "10 codes in a 32-bit word" because it wastes
//   nothing (10-in-32 loses 2 bits per word, 6%) and every 8 codes start on a byte boundary, which
//   is what a GPU kernel unpacks per thread (one 24-bit load per 8 codes).
//
//   std::vector<std::uint8_t> buf(kvcal::packed_bytes(n, 3));
//   kvcal::pack_bits(codes, n, 3, buf.data());
//   kvcal::unpack_bits(buf.data(), 0, n, 3, out);   // out[i] == codes[i]
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvcal {

// Bytes holding n codes of `bits` bits (1..8).
inline std::size_t packed_bytes(std::size_t n, int bits) {
  return (n * static_cast<std::size_t>(bits) + 7) / 8;
}

// Writes code v (< 2^bits) as code `index` of a stream whose bits there are still zero.
inline void put_bits(std::uint8_t* buf, std::size_t index, int bits, unsigned v) {
  const std::size_t bit = index * static_cast<std::size_t>(bits);
  const std::size_t byte = bit >> 3;
  const unsigned shift = static_cast<unsigned>(bit & 7);
  buf[byte] = static_cast<std::uint8_t>(buf[byte] | ((v << shift) & 0xffu));
  if (shift + static_cast<unsigned>(bits) > 8)
    buf[byte + 1] = static_cast<std::uint8_t>(buf[byte + 1] | (v >> (8 - shift)));
}

// Reads code `index` of a stream of `bits`-bit codes.
inline unsigned get_bits(const std::uint8_t* buf, std::size_t index, int bits) {
  const std::size_t bit = index * static_cast<std::size_t>(bits);
  const std::size_t byte = bit >> 3;
  const unsigned shift = static_cast<unsigned>(bit & 7);
  unsigned v = static_cast<unsigned>(buf[byte]) >> shift;
  if (shift + static_cast<unsigned>(bits) > 8)
    v |= static_cast<unsigned>(buf[byte + 1]) << (8 - shift);
  return v & ((1u << bits) - 1u);
}

// codes: [n] values < 2^bits; out: [packed_bytes(n, bits)], fully overwritten.
void pack_bits(const std::uint8_t* codes, std::size_t n, int bits, std::uint8_t* out);
// Reads codes [first, first + n) of a packed stream into codes [n].
void unpack_bits(const std::uint8_t* packed, std::size_t first, std::size_t n, int bits,
                 std::uint8_t* codes);

}  // namespace kvcal
