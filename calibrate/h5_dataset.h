// Growable row datasets for kvcal's HDF5 formats (capture): [rows, inner...] chunked along rows,
// optionally shuffle + deflate, appended to in row blocks and read back in row blocks.
//
//   auto f = kvcal::h5_file::create_append(path);
//   auto d = kvcal::h5_dataset::create(f.id(), "/layers/0/k", kvcal::h5_elem::f16, {8, 128},
//                                      {4096, true}, path);
//   d.write_rows(0, n, bits);                  // extends to n rows
//   d.read_rows_float(0, n, out.data());       // any stored float type -> float
//
// Appends that start at a chunk boundary store their whole chunks with H5Dwrite_chunk (direct
// chunk write): shuffle + deflate are applied by kvcal (calibrate/h5_chunk_filters.h), bypassing
// HDF5's filter pipeline and hyperslab machinery; the last partial chunk goes through H5Dwrite.
// calibrate/h5_chunk_writer.h does the same for many datasets at once, encoding on threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "calibrate/h5.h"
#include "calibrate/h5_chunk_filters.h"

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
  hid_t id() const { return ds_.get(); }
  h5_elem dtype() const { return dtype_; }
  std::int64_t rows() const;
  const std::vector<std::int64_t>& inner() const { return inner_; }
  std::int64_t row_elems() const;
  std::int64_t chunk_rows() const { return chunk_rows_; }          // 0 if not chunked
  bool compressed() const { return filters_.deflate_level >= 0; }  // deflate in the pipeline
  std::int64_t storage_bytes() const;                              // bytes allocated in the file

  void set_rows(std::int64_t n);  // extends or shrinks
  // `data` holds n rows in the stored type (f16 as uint16 bits). Extends the dataset if needed.
  void write_rows(std::int64_t row0, std::int64_t n, const void* data);
  void read_rows(std::int64_t row0, std::int64_t n, void* out) const;         // stored type
  void read_rows_float(std::int64_t row0, std::int64_t n, float* out) const;  // float datasets

  // ---- direct chunk writes (used by write_rows and h5_chunk_writer) ----
  // Whole chunks of rows [row0, row0 + n) that can be stored directly: n / chunk_rows() when
  // direct writes are on, row0 is at a chunk boundary and the filters are ones kvcal applies
  // itself; else 0.
  std::int64_t direct_chunks(std::int64_t row0, std::int64_t n) const;
  const h5_chunk_filters& filters() const { return filters_; }
  std::size_t chunk_bytes() const;  // chunk_rows() rows, unfiltered
  // Stores one chunk (already encoded, `filter_mask` as h5_chunk_filters::encode returns it)
  // starting at row `row0`, a chunk boundary inside the current extent.
  void write_chunk(std::int64_t row0, const void* bytes, std::size_t size,
                   std::uint32_t filter_mask);
  // On by default; off sends every write through H5Dwrite (tests compare the two).
  void set_direct_writes(bool on) { direct_ = on; }

 private:
  void init_layout();  // chunk_rows_, filters_ from the creation property list
  h5_handle ds_;
  std::string path_, where_;
  h5_elem dtype_ = h5_elem::f32;
  std::vector<std::int64_t> inner_;
  std::int64_t chunk_rows_ = 0;
  h5_chunk_filters filters_;
  bool direct_ = true;
};

}  // namespace kvcal
