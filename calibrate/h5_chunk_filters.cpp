#include "calibrate/h5_chunk_filters.h"

#include <zlib.h>

#include <cstring>

#include "kernels/common/error.h"

namespace kvcal {

void h5_shuffle_bytes(const std::uint8_t* in, std::size_t bytes, std::size_t elem_size,
                      std::uint8_t* out) {
  const std::size_t n = elem_size > 1 ? bytes / elem_size : 0;
  for (std::size_t j = 0; j < (n ? elem_size : 0); ++j) {
    std::uint8_t* o = out + j * n;
    const std::uint8_t* s = in + j;
    for (std::size_t i = 0; i < n; ++i) o[i] = s[i * elem_size];
  }
  const std::size_t done = n * elem_size;
  std::memcpy(out + done, in + done, bytes - done);
}

h5_chunk_filters h5_chunk_filters::of(hid_t dcpl, std::size_t elem_size) {
  h5_chunk_filters f;
  f.elem_size = elem_size;
  const int n = H5Pget_nfilters(dcpl);
  if (n < 0) return f;
  bool known = true;
  for (int i = 0; i < n; ++i) {
    unsigned flags = 0, cd[8] = {};
    std::size_t ncd = 8;
    char name[64];
    const H5Z_filter_t id = H5Pget_filter2(dcpl, static_cast<unsigned>(i), &flags, &ncd, cd,
                                           sizeof name, name, nullptr);
    // Shuffle must come first (the only order kvcal creates), deflate at most once; any other
    // filter leaves the dataset to HDF5's own pipeline.
    if (id == H5Z_FILTER_SHUFFLE && i == 0) {
      f.shuffle = true;
    } else if (id == H5Z_FILTER_DEFLATE && f.deflate_level < 0 && ncd >= 1) {
      f.deflate_level = static_cast<int>(cd[0]);
      f.deflate_index = static_cast<unsigned>(i);
    } else {
      known = false;
    }
  }
  f.supported = known;
  return f;
}

std::uint32_t h5_chunk_filters::encode(const void* chunk, std::size_t bytes,
                                       std::vector<std::uint8_t>& out) const {
  KVCAL_ASSERT(supported, "h5_chunk_filters::encode on an unsupported pipeline");
  const auto* src = static_cast<const std::uint8_t*>(chunk);
  thread_local std::vector<std::uint8_t> shuffled;  // reused: no page faults per chunk
  if (shuffle) {
    (deflate_level >= 0 ? shuffled : out).resize(bytes);
    h5_shuffle_bytes(src, bytes, elem_size, deflate_level >= 0 ? shuffled.data() : out.data());
    if (deflate_level < 0) return 0;
    src = shuffled.data();
  }
  if (deflate_level < 0) {
    out.assign(src, src + bytes);
    return 0;
  }
  // What H5Z_filter_deflate does: compress2 into a compressBound buffer (a zlib stream).
  uLongf n = compressBound(static_cast<uLong>(bytes));
  out.resize(n);
  const int rc = compress2(out.data(), &n, src, static_cast<uLong>(bytes), deflate_level);
  KVCAL_CHECK(rc == Z_OK, "zlib compress2 failed (", rc, ") on a ", bytes, "-byte chunk");
  if (n < bytes) {
    out.resize(n);
    return 0;
  }
  // Deflate does not pay on this chunk: store it shuffled only, deflate marked skipped.
  out.assign(src, src + bytes);
  return 1u << deflate_index;
}

}  // namespace kvcal
