// Writes a kvcal capture file (layout: calibrate/capture_format.h) in row blocks of whole
// sequences, so that a killed capture can be resumed from its last complete sequence.
//
// Each block: write every recorded dataset for the same new rows, then commit(), which flushes the
// data, then advances n_tokens / n_sequences and flushes again. The file is opened in HDF5
// "append" mode (h5_file::create_append): metadata only reaches the disk at those flushes, so a
// kill between commits leaves the file as of the last commit.
//
//   auto w = kvcal::capture_writer::create(out.temp_path(), header);
//   w.write(kvcal::capture_ids_path, ids.data(), n);            // int32
//   w.write(kvcal::capture_layer_path(0, "k"), k_bits, n);      // header.dtype
//   ...
//   w.commit(n, n_sequences_in_block);
//   w.finish();                                                  // complete = 1
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "calibrate/capture_format.h"
#include "calibrate/h5.h"
#include "calibrate/h5_dataset.h"

namespace kvcal {

// Chunk rows for a dataset of `row_bytes` per row: a divisor of seq_len (chunks never straddle a
// commit), as large as fits in about 4 MiB.
std::int64_t capture_chunk_rows(std::int64_t seq_len, std::int64_t row_bytes);

class capture_writer {
 public:
  // Creates (truncates) `path`: root attributes and every dataset, empty, complete = 0.
  static capture_writer create(const std::string& path, const capture_header& h);
  // Reopens a partial capture to append to it. `check` sees its header first and may throw (the
  // file is then left as it was); then datasets are cut back to its n_tokens rows.
  static capture_writer reopen(const std::string& path,
                               const std::function<void(const capture_header&)>& check = {});

  const capture_header& header() const { return h_; }
  const std::string& path() const { return f_.path(); }

  // Writes rows [n_tokens, n_tokens + n) of one dataset (a capture_*_path or capture_layer_path).
  // `data` is int32 for /tokens/*, float32 for attention statistics, else header().dtype (float16
  // as its 16 bits).
  void write(const std::string& dataset, const void* data, std::int64_t n);
  // The same rows of several datasets at once: whole chunks are compressed on
  // write_threads() threads and stored directly (calibrate/h5_chunk_writer.h).
  void write(const std::vector<std::pair<std::string, const void*>>& data, std::int64_t n);
  void set_write_threads(int n);  // >= 1; default h5_default_write_threads()
  int write_threads() const { return threads_; }
  // Makes the n rows just written part of the file: every dataset must have received them.
  void commit(std::int64_t n, std::int64_t sequences);
  void finish();  // complete = 1 (n_tokens rows in every dataset)
  std::int64_t file_bytes() const { return f_.file_size(); }

 private:
  capture_writer(h5_file f, capture_header h);
  void open_datasets(bool create);
  h5_file f_;
  capture_header h_;
  std::map<std::string, h5_dataset> ds_;
  int threads_ = 1;
};

// Root attributes (everything but the three progress fields, which commit() maintains).
void write_capture_header(h5_file& f, const capture_header& h);

}  // namespace kvcal
