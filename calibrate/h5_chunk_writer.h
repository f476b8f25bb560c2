// Appends row blocks to several chunked datasets at once, compressing their whole chunks on
// worker threads. HDF5 (a serial build, not thread safe) is only called from the calling thread;
// the workers only run h5_chunk_filters::encode (shuffle + zlib), at most 2 x threads chunks ahead
// of the chunk being written, so memory stays bounded.
//
// Per call: every dataset is extended; the rows that do not fill a whole chunk go through
// H5Dwrite while the workers encode; then the whole chunks are stored with H5Dwrite_chunk in
// block order. Datasets without filters skip the workers (their chunks are the caller's bytes).
//
//   std::vector<kvcal::h5_row_block> blocks = {{&k, row0, n, k_rows}, {&v, row0, n, v_rows}};
//   kvcal::h5_write_blocks(blocks, kvcal::h5_default_write_threads());
#pragma once

#include <cstdint>
#include <vector>

#include "calibrate/h5_dataset.h"

namespace kvcal {

struct h5_row_block {
  h5_dataset* dataset = nullptr;
  std::int64_t row0 = 0, n = 0;
  const void* data = nullptr;  // n rows in the stored type (as h5_dataset::write_rows)
};

// hardware_concurrency() - 1 (one core left to the caller), at least 1.
int h5_default_write_threads();

// threads: encoding threads (>= 1). Throws kvcal::error on a write failure (after every worker
// has stopped); rows already written stay written.
void h5_write_blocks(const std::vector<h5_row_block>& blocks, int threads);

}  // namespace kvcal
