// Reads a kvcal capture file (layout: calibrate/capture_format.h): validates format and version,
// exposes the header, and reads row blocks of any dataset as float (or int32 for tokens).
// Only the first n_tokens rows (complete sequences) are visible.
//
//   kvcal::capture_reader r("capture.h5");
//   std::vector<float> k(rows * r.row_elems(0, "k"));
//   r.read_rows(0, "k", row0, rows, k.data());   // [rows, n_kv_heads, head_dim], any stored dtype
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "calibrate/capture_format.h"
#include "calibrate/h5.h"
#include "calibrate/h5_dataset.h"

namespace kvcal {

// Reads the root attributes; refuses another format or version (printing both).
capture_header read_capture_header(const h5_file& f);

class capture_reader {
 public:
  // allow_incomplete: also open a capture that did not finish (a .partial file).
  explicit capture_reader(const std::string& path, bool allow_incomplete = false);

  const capture_header& header() const { return h_; }
  const std::string& path() const { return f_.path(); }
  std::int64_t n_tokens() const { return h_.n_tokens; }
  // Whether layer `layer` has dataset `name` (k, k_rope, v, q, hidden, attn_cum, ...).
  bool has(int layer, const std::string& name) const;
  std::vector<std::int64_t> inner_shape(int layer, const std::string& name) const;
  std::int64_t row_elems(int layer, const std::string& name) const;
  // Rows [row0, row0 + n) as float; `out` holds n * row_elems floats.
  void read_rows(int layer, const std::string& name, std::int64_t row0, std::int64_t n,
                 float* out) const;
  // /tokens/<name> (ids, seq, pos) rows [row0, row0 + n).
  std::vector<std::int32_t> read_tokens(const std::string& name, std::int64_t row0,
                                        std::int64_t n) const;
  // The dataset itself (storage size, chunking), for reports.
  const h5_dataset& dataset(const std::string& path) const;
  const h5_file& file() const { return f_; }

 private:
  h5_file f_;
  capture_header h_;
  mutable std::map<std::string, h5_dataset> ds_;
};

}  // namespace kvcal
