#include "calibrate/h5_dataset.h"

#include <utility>

#include "kernels/common/error.h"
#include "kernels/common/half.h"

#if !H5_VERSION_GE(1, 10, 3)
#error "kvcal needs HDF5 >= 1.10.3 (H5Dwrite_chunk)"
#endif

namespace kvcal {
namespace {

// IEEE half as h5py defines it (HDF5 1.10 has no predefined 16-bit float type).
hid_t new_f16_type() {
  hid_t t = H5Tcopy(H5T_IEEE_F32LE);
  H5Tset_fields(t, 15, 10, 5, 0, 10);
  H5Tset_size(t, 2);
  H5Tset_ebias(t, 15);
  return t;
}

// The file (and memory) type of each element type.
h5_handle elem_type(h5_elem t) {
  switch (t) {
    case h5_elem::f16:
      return h5_handle(new_f16_type(), H5Tclose);
    case h5_elem::f32:
      return h5_handle(H5Tcopy(H5T_IEEE_F32LE), H5Tclose);
    case h5_elem::i32:
      return h5_handle(H5Tcopy(H5T_STD_I32LE), H5Tclose);
  }
  KVCAL_ASSERT(false, "bad h5_elem");
}

}  // namespace

const char* h5_elem_name(h5_elem t) {
  switch (t) {
    case h5_elem::f16:
      return "float16";
    case h5_elem::f32:
      return "float32";
    case h5_elem::i32:
      return "int32";
  }
  return "?";
}

std::size_t h5_elem_size(h5_elem t) {
  return t == h5_elem::f16 ? 2 : 4;
}

bool h5_path_exists(hid_t loc, const std::string& path) {
  std::string prefix;
  std::size_t i = 0;
  while (i <= path.size()) {
    std::size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    if (j > i) {
      prefix = path.substr(0, j);
      if (H5Lexists(loc, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    }
    i = j + 1;
  }
  return !prefix.empty();
}

h5_dataset h5_dataset::create(hid_t loc, const std::string& path, h5_elem dtype,
                              const std::vector<std::int64_t>& inner, const h5_dataset_options& opt,
                              const std::string& where) {
  KVCAL_CHECK(opt.chunk_rows >= 1, where, ": ", path, ": chunk rows must be >= 1");
  const int rank = static_cast<int>(inner.size()) + 1;
  std::vector<hsize_t> dims(rank, 0), maxdims(rank), chunk(rank);
  maxdims[0] = H5S_UNLIMITED;
  chunk[0] = static_cast<hsize_t>(opt.chunk_rows);
  for (std::size_t i = 0; i < inner.size(); ++i) {
    KVCAL_CHECK(inner[i] >= 1, where, ": ", path, ": dimension ", i + 1, " must be >= 1");
    dims[i + 1] = maxdims[i + 1] = chunk[i + 1] = static_cast<hsize_t>(inner[i]);
  }
  h5_handle space(H5Screate_simple(rank, dims.data(), maxdims.data()), H5Sclose);
  h5_handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5Pset_chunk(dcpl.get(), rank, chunk.data());
  if (opt.compress) {
    KVCAL_CHECK(H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0, where,
                ": this HDF5 library has no deflate filter (use --compress off)");
    H5Pset_shuffle(dcpl.get());
    H5Pset_deflate(dcpl.get(), static_cast<unsigned>(opt.deflate_level));
  }
  h5_handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  h5_handle dapl(H5Pcreate(H5P_DATASET_ACCESS), H5Pclose);
  H5Pset_chunk_cache(dapl.get(), 0, 0, 1.0);  // whole-chunk appends go straight to disk
  h5_handle type = elem_type(dtype);
  h5_dataset d;
  d.ds_ = h5_handle(
      H5Dcreate2(loc, path.c_str(), type.get(), space.get(), lcpl.get(), dcpl.get(), dapl.get()),
      H5Dclose);
  KVCAL_CHECK(d.ds_, where, ": cannot create dataset ", path);
  d.path_ = path;
  d.where_ = where;
  d.dtype_ = dtype;
  d.inner_ = inner;
  d.init_layout();
  return d;
}

h5_dataset h5_dataset::open(hid_t loc, const std::string& path, const std::string& where,
                            std::size_t chunk_cache_bytes) {
  KVCAL_CHECK(h5_path_exists(loc, path), where, ": missing dataset ", path);
  h5_handle dapl(H5Pcreate(H5P_DATASET_ACCESS), H5Pclose);
  H5Pset_chunk_cache(dapl.get(), chunk_cache_bytes ? 521 : 0, chunk_cache_bytes, 1.0);
  h5_dataset d;
  d.ds_ = h5_handle(H5Dopen2(loc, path.c_str(), dapl.get()), H5Dclose);
  KVCAL_CHECK(d.ds_, where, ": cannot open dataset ", path);
  d.path_ = path;
  d.where_ = where;
  h5_handle type(H5Dget_type(d.ds_.get()), H5Tclose);
  const H5T_class_t c = H5Tget_class(type.get());
  const std::size_t size = H5Tget_size(type.get());
  if (c == H5T_FLOAT && size == 2)
    d.dtype_ = h5_elem::f16;
  else if (c == H5T_FLOAT && size == 4)
    d.dtype_ = h5_elem::f32;
  else if (c == H5T_INTEGER && size == 4 && H5Tget_sign(type.get()) == H5T_SGN_2)
    d.dtype_ = h5_elem::i32;
  else
    KVCAL_FAIL(where, ": dataset ", path, " has an element type kvcal does not write (",
               c == H5T_FLOAT     ? "float"
               : c == H5T_INTEGER ? "integer"
                                  : "other",
               " of ", size, " bytes)");
  h5_handle space(H5Dget_space(d.ds_.get()), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  KVCAL_CHECK(rank >= 1, where, ": dataset ", path, " is a scalar");
  std::vector<hsize_t> dims(rank);
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  for (int i = 1; i < rank; ++i) d.inner_.push_back(static_cast<std::int64_t>(dims[i]));
  d.init_layout();
  return d;
}

std::int64_t h5_dataset::rows() const {
  h5_handle space(H5Dget_space(ds_.get()), H5Sclose);
  std::vector<hsize_t> dims(inner_.size() + 1);
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return static_cast<std::int64_t>(dims[0]);
}

std::int64_t h5_dataset::row_elems() const {
  std::int64_t n = 1;
  for (auto v : inner_) n *= v;
  return n;
}

void h5_dataset::init_layout() {
  h5_handle dcpl(H5Dget_create_plist(ds_.get()), H5Pclose);
  chunk_rows_ = 0;
  if (H5Pget_layout(dcpl.get()) == H5D_CHUNKED) {
    std::vector<hsize_t> chunk(inner_.size() + 1, 0);
    H5Pget_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data());
    chunk_rows_ = static_cast<std::int64_t>(chunk[0]);
  }
  filters_ = h5_chunk_filters::of(dcpl.get(), h5_elem_size(dtype_));
}

std::int64_t h5_dataset::storage_bytes() const {
  return static_cast<std::int64_t>(H5Dget_storage_size(ds_.get()));
}

void h5_dataset::set_rows(std::int64_t n) {
  std::vector<hsize_t> dims(inner_.size() + 1);
  dims[0] = static_cast<hsize_t>(n);
  for (std::size_t i = 0; i < inner_.size(); ++i) dims[i + 1] = static_cast<hsize_t>(inner_[i]);
  KVCAL_CHECK(H5Dset_extent(ds_.get(), dims.data()) >= 0, where_, ": cannot resize ", path_, " to ",
              n, " rows");
}

namespace {
// File and memory dataspaces selecting rows [row0, row0 + n).
std::pair<h5_handle, h5_handle> row_spaces(hid_t ds, std::int64_t row0, std::int64_t n,
                                           const std::vector<std::int64_t>& inner) {
  std::vector<hsize_t> start(inner.size() + 1, 0), count(inner.size() + 1);
  start[0] = static_cast<hsize_t>(row0);
  count[0] = static_cast<hsize_t>(n);
  for (std::size_t i = 0; i < inner.size(); ++i) count[i + 1] = static_cast<hsize_t>(inner[i]);
  h5_handle fspace(H5Dget_space(ds), H5Sclose);
  H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
  h5_handle mspace(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr),
                   H5Sclose);
  return {std::move(fspace), std::move(mspace)};
}
}  // namespace

namespace {
bool little_endian_host() {
  const std::uint16_t one = 1;
  return *reinterpret_cast<const std::uint8_t*>(&one) == 1;
}
}  // namespace

std::size_t h5_dataset::chunk_bytes() const {
  return static_cast<std::size_t>(chunk_rows_ * row_elems()) * h5_elem_size(dtype_);
}

std::int64_t h5_dataset::direct_chunks(std::int64_t row0, std::int64_t n) const {
  // Direct writes store memory bytes as they are: the file types are little-endian.
  static const bool little = little_endian_host();
  if (!direct_ || !little || chunk_rows_ <= 0 || !filters_.supported || row0 % chunk_rows_ != 0)
    return 0;
  return n / chunk_rows_;
}

void h5_dataset::write_chunk(std::int64_t row0, const void* bytes, std::size_t size,
                             std::uint32_t filter_mask) {
  std::vector<hsize_t> offset(inner_.size() + 1, 0);
  offset[0] = static_cast<hsize_t>(row0);
  KVCAL_CHECK(H5Dwrite_chunk(ds_.get(), H5P_DEFAULT, filter_mask, offset.data(), size, bytes) >= 0,
              where_, ": cannot write the chunk at row ", row0, " of ", path_, " (disk full?)");
}

void h5_dataset::write_rows(std::int64_t row0, std::int64_t n, const void* data) {
  KVCAL_CHECK(row0 >= 0 && n >= 0, where_, ": ", path_, ": bad row range");
  if (n == 0) return;
  if (row0 + n > rows()) set_rows(row0 + n);
  const std::int64_t whole = direct_chunks(row0, n);
  if (whole > 0) {
    const std::size_t cb = chunk_bytes();
    std::vector<std::uint8_t> buf;
    for (std::int64_t c = 0; c < whole; ++c) {
      const void* src = static_cast<const std::uint8_t*>(data) + static_cast<std::size_t>(c) * cb;
      const std::int64_t r = row0 + c * chunk_rows_;
      if (!filters_.any()) {
        write_chunk(r, src, cb, 0);
      } else {
        const std::uint32_t mask = filters_.encode(src, cb, buf);
        write_chunk(r, buf.data(), buf.size(), mask);
      }
    }
    const std::int64_t done = whole * chunk_rows_;
    data = static_cast<const std::uint8_t*>(data) +
           static_cast<std::size_t>(done * row_elems()) * h5_elem_size(dtype_);
    row0 += done;
    n -= done;
    if (n == 0) return;
  }
  auto [fspace, mspace] = row_spaces(ds_.get(), row0, n, inner_);
  h5_handle type = elem_type(dtype_);
  KVCAL_CHECK(H5Dwrite(ds_.get(), type.get(), mspace.get(), fspace.get(), H5P_DEFAULT, data) >= 0,
              where_, ": cannot write rows ", row0, "..", row0 + n, " of ", path_, " (disk full?)");
}

void h5_dataset::read_rows(std::int64_t row0, std::int64_t n, void* out) const {
  KVCAL_CHECK(row0 >= 0 && n >= 0 && row0 + n <= rows(), where_, ": ", path_, ": rows ", row0, "..",
              row0 + n, " out of range (", rows(), " rows)");
  if (n == 0) return;
  auto [fspace, mspace] = row_spaces(ds_.get(), row0, n, inner_);
  h5_handle type = elem_type(dtype_);
  KVCAL_CHECK(H5Dread(ds_.get(), type.get(), mspace.get(), fspace.get(), H5P_DEFAULT, out) >= 0,
              where_, ": cannot read rows ", row0, "..", row0 + n, " of ", path_,
              " (corrupt file?)");
}

void h5_dataset::read_rows_float(std::int64_t row0, std::int64_t n, float* out) const {
  KVCAL_CHECK(dtype_ != h5_elem::i32, where_, ": ", path_, " is not a float dataset");
  if (dtype_ == h5_elem::f32) return read_rows(row0, n, out);
  const std::size_t count = static_cast<std::size_t>(n * row_elems());
  std::vector<std::uint16_t> bits(count);
  read_rows(row0, n, bits.data());
  for (std::size_t i = 0; i < count; ++i) out[i] = fp16_to_float(bits[i]);
}

}  // namespace kvcal
