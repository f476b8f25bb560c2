// A read-only memory-mapped file. Empty files map to an empty span (mmap of 0 bytes is invalid).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kvcal {

class mapped_file {
 public:
  explicit mapped_file(const std::string& path);  // throws kvcal::error naming the file
  ~mapped_file();
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  mapped_file(mapped_file&& o) noexcept;
  mapped_file& operator=(mapped_file&& o) noexcept;

  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace kvcal
