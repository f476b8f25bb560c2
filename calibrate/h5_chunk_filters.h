// HDF5's shuffle and deflate filters applied by kvcal itself, so that whole chunks can be
// compressed on several threads and stored with H5Dwrite_chunk (direct chunk write), bypassing
// HDF5's single-threaded filter pipeline. The bytes are exactly what the pipeline would store
// (readers decode them with the dataset's own filters), except that a chunk deflate does not
// shrink is stored without it and marked so in its filter mask (as HDF5 does for an optional
// filter that fails).
//
//   kvcal::h5_chunk_filters f = kvcal::h5_chunk_filters::of(dcpl, elem_size);
//   if (f.supported) {
//     std::vector<std::uint8_t> buf;
//     std::uint32_t mask = f.encode(chunk_bytes, n_bytes, buf);    // thread safe
//     H5Dwrite_chunk(ds, H5P_DEFAULT, mask, offset, buf.size(), buf.data());
//   }
#pragma once

#include <hdf5.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvcal {

// HDF5 shuffle: byte j of element i goes to out[j * n + i] (n = bytes / elem_size elements);
// trailing bytes that do not fill an element are copied as they are.
void h5_shuffle_bytes(const std::uint8_t* in, std::size_t bytes, std::size_t elem_size,
                      std::uint8_t* out);

struct h5_chunk_filters {
  bool supported = false;  // the pipeline is one of: none, shuffle, deflate, shuffle + deflate
  bool shuffle = false;
  int deflate_level = -1;      // -1: no deflate filter
  unsigned deflate_index = 0;  // position of deflate in the pipeline (its filter-mask bit)
  std::size_t elem_size = 1;   // shuffle element size = the datatype size

  // Reads the pipeline of a dataset creation property list.
  static h5_chunk_filters of(hid_t dcpl, std::size_t elem_size);
  bool any() const { return shuffle || deflate_level >= 0; }
  // Encodes one whole chunk into `out` (resized) and returns its filter mask (bit i set: filter i
  // skipped). Touches no HDF5 state: safe on any thread.
  std::uint32_t encode(const void* chunk, std::size_t bytes, std::vector<std::uint8_t>& out) const;
};

}  // namespace kvcal
