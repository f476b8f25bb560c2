// Atomic output files: nothing half-written is ever left under the final name.
//
// Writers produce `NAME.partial`; commit() flushes it to disk (fsync), renames it to NAME and
// syncs the directory. If the object is destroyed without commit() (an error was thrown), the
// partial file is removed. Works for any writer that takes a path (HDF5, safetensors, text).
//
//   kvcal::atomic_output out(path);          // checks the directory is writable
//   write_my_format(out.temp_path(), ...);    // any writer
//   out.commit();                             // rename on success
#pragma once

#include <string>
#include <string_view>

namespace kvcal {

class atomic_output {
 public:
  explicit atomic_output(std::string path);
  ~atomic_output();
  atomic_output(const atomic_output&) = delete;
  atomic_output& operator=(const atomic_output&) = delete;

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_; }
  void commit();
  // Keeps the partial file on destruction (resumable writers such as capture use this).
  void keep_partial_on_failure() { keep_partial_ = true; }

 private:
  std::string path_, temp_;
  bool committed_ = false, keep_partial_ = false;
};

// Writes `bytes` to `path` atomically (temp file, fsync, rename).
void write_file_atomic(const std::string& path, std::string_view bytes);

}  // namespace kvcal
