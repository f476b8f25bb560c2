// SHA-256 (FIPS 180-4), for fingerprints: config hashes, input files of a capture, tokenizers.
//
//   kvcal::sha256 h; h.update(data, n); std::string hex = h.hex();
//   kvcal::sha256_hex(bytes);  kvcal::sha256_file(path);
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvcal {

class sha256 {
 public:
  sha256();
  void update(const void* data, std::size_t n);
  std::array<std::uint8_t, 32> digest();  // finalizes; the object must not be updated after
  std::string hex();

 private:
  void block(const std::uint8_t* p);
  std::array<std::uint32_t, 8> h_;
  std::array<std::uint8_t, 64> buf_{};
  std::size_t buf_len_ = 0;
  std::uint64_t total_ = 0;
};

std::string sha256_hex(std::string_view bytes);
// Streams the file; throws kvcal::error naming it when unreadable.
std::string sha256_file(const std::string& path);

}  // namespace kvcal
