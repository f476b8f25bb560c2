// Growable row datasets for kvcal's HDF5 formats (capture): [rows, inner...] chunked along rows,
// optionally shuffle + deflate, appended to in row blocks and read back in row blocks.
//
//   auto f = kvcal::h5_file::create_append(path);
//   auto d = kvcal::h5_dataset::create(f.id(), "/layers/0/k", kvcal::h5_elem::f16, {8, 128},
//                                      {4096, true}, path);
//   d.write_rows(0, n, bits);                  // extends to n rows
//   d.read_rows_float(0, n, out.data());       // any stored float type -> float
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "calibrate/h5.h"

namespace kvcal {

// Element types of kvcal datasets. float16 is IEEE half (h5py reads it as numpy float16); in
// memory it is passed as its 16 bits (uint16_t).
enum class h5_elem { f16, f32, i32 };
const char* h5_elem_name(h5_elem t);  // "float16" | "float32" | "int32"
std::size_t h5_elem_size(h5_elem t);

// True if every component of the slash-separated `path` exists under `loc`.
bool h5_path_exists(hid_t loc, const std::string& path);

struct h5_dataset_options {
  std::int64_t chunk_rows = 1024;  // chunking runs along the row (first) dimension only
  bool compress = true;            // shuffle + deflate
  int deflate_level = 1;
};

// A dataset of shape [rows, inner...] that grows along its first dimension (chunked, unlimited).
class h5_dataset {
 public:
  h5_dataset() = default;
  // Creates intermediate groups. `where` names the file in errors.
  static h5_dataset create(hid_t loc, const std::string& path, h5_elem dtype,
                           const std::vector<std::int64_t>& inner, const h5_dataset_options& opt,
                           const std::string& where);
  // chunk_cache_bytes: HDF5 raw-data chunk cache for this dataset (0 disables it: whole-chunk
  // writes then go straight to the filters and the disk).
  static h5_dataset open(hid_t loc, const std::string& path, const std::string& where,
                         std::size_t chunk_cache_bytes = 8u << 20);

  const std::string& path() const { return path_; }
  h5_elem dtype() const { return dtype_; }
  std::int64_t rows() const;
  const std::vector<std::int64_t>& inner() const { return inner_; }
  std::int64_t row_elems() const;
  std::int64_t chunk_rows() const;
  bool compressed() const;             // a deflate filter is in the pipeline
  std::int64_t storage_bytes() const;  // bytes allocated in the file

  void set_rows(std::int64_t n);  // extends or shrinks
  // `data` holds n rows in the stored type (f16 as uint16 bits). Extends the dataset if needed.
  void write_rows(std::int64_t row0, std::int64_t n, const void* data);
  void read_rows(std::int64_t row0, std::int64_t n, void* out) const;         // stored type
  void read_rows_float(std::int64_t row0, std::int64_t n, float* out) const;  // float datasets

 private:
  h5_handle ds_;
  std::string path_, where_;
  h5_elem dtype_ = h5_elem::f32;
  std::vector<std::int64_t> inner_;
};

}  // namespace kvcal
