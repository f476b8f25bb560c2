#include "calibrate/h5_array.h"

#include <algorithm>

#include "kernels/common/error.h"
#include "kernels/common/half.h"

namespace kvcal {

namespace {

// IEEE binary16 as h5py writes numpy float16 (HDF5 1.10 has no predefined half type).
h5_handle make_f16_type() {
  h5_handle t(H5Tcopy(H5T_IEEE_F32LE), H5Tclose);
  H5Tset_fields(t.get(), 15, 10, 5, 0, 10);
  H5Tset_size(t.get(), 2);
  H5Tset_ebias(t.get(), 15);
  return t;
}

h5_handle open_dataset(const h5_file& f, const std::string& path) {
  KVCAL_CHECK(h5_exists(f, path), f.path(), ": missing dataset '", path, "'");
  h5_handle d(H5Dopen2(f.id(), path.c_str(), H5P_DEFAULT), H5Dclose);
  KVCAL_CHECK(static_cast<bool>(d), f.path(), ": '", path, "' is not a dataset");
  return d;
}

h5_handle row_space(const h5_file& f, const std::string& path, hid_t dset, std::int64_t row0,
                    std::int64_t n_rows, std::vector<hsize_t>* mem_dims) {
  h5_handle space(H5Dget_space(dset), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  KVCAL_CHECK(rank >= 1, f.path(), ": '", path, "' has no rows");
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  KVCAL_CHECK(row0 >= 0 && n_rows >= 0 && static_cast<hsize_t>(row0 + n_rows) <= dims[0], f.path(),
              ": '", path, "': rows [", row0, ", ", row0 + n_rows, ") outside [0, ", dims[0], ")");
  std::vector<hsize_t> start(dims.size(), 0), count = dims;
  start[0] = static_cast<hsize_t>(row0);
  count[0] = static_cast<hsize_t>(n_rows);
  KVCAL_CHECK(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(),
                                  nullptr) >= 0,
              f.path(), ": '", path, "': cannot select rows");
  *mem_dims = count;
  return space;
}

hid_t mem_type_of(h5_dtype t) {
  switch (t) {
    case h5_dtype::f64:
      return H5T_NATIVE_DOUBLE;
    case h5_dtype::i64:
      return H5T_NATIVE_INT64;
    default:
      return H5T_NATIVE_FLOAT;
  }
}

}  // namespace

bool h5_exists(const h5_file& f, const std::string& path) {
  // Each prefix must exist before H5Lexists may be asked about the next component.
  if (path.empty() || path == "/") return true;
  size_t pos = 0;
  while (true) {
    pos = path.find('/', pos + 1);
    const std::string prefix = path.substr(0, pos);
    if (!prefix.empty() && prefix != "/" && H5Lexists(f.id(), prefix.c_str(), H5P_DEFAULT) <= 0)
      return false;
    if (pos == std::string::npos) return true;
  }
}

std::vector<std::int64_t> h5_dataset_dims(const h5_file& f, const std::string& path) {
  h5_handle d = open_dataset(f, path);
  h5_handle space(H5Dget_space(d.get()), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  KVCAL_CHECK(rank >= 0, f.path(), ": '", path, "': cannot read its shape");
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank > 0) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return std::vector<std::int64_t>(dims.begin(), dims.end());
}

h5_dtype h5_dataset_float_type(const h5_file& f, const std::string& path) {
  h5_handle d = open_dataset(f, path);
  h5_handle t(H5Dget_type(d.get()), H5Tclose);
  KVCAL_CHECK(H5Tget_class(t.get()) == H5T_FLOAT, f.path(), ": '", path,
              "' is not a floating-point dataset");
  switch (H5Tget_size(t.get())) {
    case 2:
      return h5_dtype::f16;
    case 4:
      return h5_dtype::f32;
    case 8:
      return h5_dtype::f64;
    default:
      KVCAL_FAIL(f.path(), ": '", path, "': unsupported float size");
  }
}

void h5_create_dataset(h5_file& f, const std::string& path, h5_dtype type,
                       const std::vector<std::int64_t>& dims, std::int64_t chunk_rows) {
  std::vector<hsize_t> hd(dims.begin(), dims.end());
  h5_handle space(hd.empty() ? H5Screate(H5S_SCALAR)
                             : H5Screate_simple(static_cast<int>(hd.size()), hd.data(), nullptr),
                  H5Sclose);
  h5_handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  h5_handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  if (chunk_rows > 0 && !hd.empty() && hd[0] > 0) {
    std::vector<hsize_t> chunk = hd;
    chunk[0] = std::min<hsize_t>(hd[0], static_cast<hsize_t>(chunk_rows));
    H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data());
  }
  h5_handle f16;
  hid_t file_type = H5T_IEEE_F32LE;
  switch (type) {
    case h5_dtype::f16:
      f16 = make_f16_type();
      file_type = f16.get();
      break;
    case h5_dtype::f32:
      file_type = H5T_IEEE_F32LE;
      break;
    case h5_dtype::f64:
      file_type = H5T_IEEE_F64LE;
      break;
    case h5_dtype::i64:
      file_type = H5T_STD_I64LE;
      break;
  }
  h5_handle d(
      H5Dcreate2(f.id(), path.c_str(), file_type, space.get(), lcpl.get(), dcpl.get(), H5P_DEFAULT),
      H5Dclose);
  KVCAL_CHECK(static_cast<bool>(d), f.path(), ": cannot create dataset '", path, "'");
}

void h5_write_rows(h5_file& f, const std::string& path, std::int64_t row0, std::int64_t n_rows,
                   const float* data) {
  h5_handle d = open_dataset(f, path);
  std::vector<hsize_t> mem_dims;
  h5_handle fspace = row_space(f, path, d.get(), row0, n_rows, &mem_dims);
  h5_handle mspace(H5Screate_simple(static_cast<int>(mem_dims.size()), mem_dims.data(), nullptr),
                   H5Sclose);
  KVCAL_CHECK(
      H5Dwrite(d.get(), H5T_NATIVE_FLOAT, mspace.get(), fspace.get(), H5P_DEFAULT, data) >= 0,
      f.path(), ": cannot write rows of '", path, "'");
}

void h5_read_rows(const h5_file& f, const std::string& path, std::int64_t row0, std::int64_t n_rows,
                  float* out) {
  h5_handle d = open_dataset(f, path);
  std::vector<hsize_t> mem_dims;
  h5_handle fspace = row_space(f, path, d.get(), row0, n_rows, &mem_dims);
  if (n_rows == 0) return;
  h5_handle mspace(H5Screate_simple(static_cast<int>(mem_dims.size()), mem_dims.data(), nullptr),
                   H5Sclose);
  size_t n = 1;
  for (hsize_t v : mem_dims) n *= v;
  if (h5_dataset_float_type(f, path) == h5_dtype::f16) {
    h5_handle t = make_f16_type();
    std::vector<std::uint16_t> raw(n);
    KVCAL_CHECK(H5Dread(d.get(), t.get(), mspace.get(), fspace.get(), H5P_DEFAULT, raw.data()) >= 0,
                f.path(), ": cannot read rows [", row0, ", ", row0 + n_rows, ") of '", path,
                "' (truncated or corrupt?)");
    for (size_t i = 0; i < n; ++i) out[i] = fp16_to_float(raw[i]);
    return;
  }
  KVCAL_CHECK(H5Dread(d.get(), H5T_NATIVE_FLOAT, mspace.get(), fspace.get(), H5P_DEFAULT, out) >= 0,
              f.path(), ": cannot read rows [", row0, ", ", row0 + n_rows, ") of '", path,
              "' (truncated or corrupt?)");
}

void h5_read_rows_f16(const h5_file& f, const std::string& path, std::int64_t row0,
                      std::int64_t n_rows, std::uint16_t* out) {
  KVCAL_CHECK(h5_dataset_float_type(f, path) == h5_dtype::f16, f.path(), ": '", path,
              "' is not float16");
  h5_handle d = open_dataset(f, path);
  std::vector<hsize_t> mem_dims;
  h5_handle fspace = row_space(f, path, d.get(), row0, n_rows, &mem_dims);
  if (n_rows == 0) return;
  h5_handle mspace(H5Screate_simple(static_cast<int>(mem_dims.size()), mem_dims.data(), nullptr),
                   H5Sclose);
  h5_handle t = make_f16_type();
  KVCAL_CHECK(H5Dread(d.get(), t.get(), mspace.get(), fspace.get(), H5P_DEFAULT, out) >= 0,
              f.path(), ": cannot read rows [", row0, ", ", row0 + n_rows, ") of '", path,
              "' (truncated or corrupt?)");
}

void h5_write_f64(h5_file& f, const std::string& path, const std::vector<std::int64_t>& dims,
                  const double* data) {
  h5_create_dataset(f, path, h5_dtype::f64, dims);
  h5_handle d = open_dataset(f, path);
  KVCAL_CHECK(
      H5Dwrite(d.get(), mem_type_of(h5_dtype::f64), H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0,
      f.path(), ": cannot write '", path, "'");
}

void h5_write_i64(h5_file& f, const std::string& path, std::int64_t value) {
  h5_create_dataset(f, path, h5_dtype::i64, {});
  h5_handle d = open_dataset(f, path);
  KVCAL_CHECK(H5Dwrite(d.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &value) >= 0,
              f.path(), ": cannot write '", path, "'");
}

std::vector<double> h5_read_f64(const h5_file& f, const std::string& path) {
  h5_handle d = open_dataset(f, path);
  h5_handle space(H5Dget_space(d.get()), H5Sclose);
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  KVCAL_CHECK(n >= 0, f.path(), ": '", path, "': cannot read its size");
  std::vector<double> v(static_cast<size_t>(n));
  KVCAL_CHECK(H5Dread(d.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0,
              f.path(), ": cannot read '", path, "' (truncated or corrupt?)");
  return v;
}

std::int64_t h5_read_i64(const h5_file& f, const std::string& path) {
  h5_handle d = open_dataset(f, path);
  h5_handle space(H5Dget_space(d.get()), H5Sclose);
  KVCAL_CHECK(H5Sget_simple_extent_npoints(space.get()) == 1, f.path(), ": '", path,
              "' is not a scalar");
  std::int64_t v = 0;
  KVCAL_CHECK(H5Dread(d.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v) >= 0, f.path(),
              ": cannot read '", path, "'");
  return v;
}

}  // namespace kvcal
