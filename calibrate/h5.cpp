#include "calibrate/h5.h"

#include <sys/stat.h>

#include <vector>

#include "kernels/common/error.h"

namespace kvcal {
namespace {
// H5Fis_accessible replaced H5Fis_hdf5 in HDF5 1.12; Debian 12 ships 1.10.
bool is_hdf5(const std::string& path) {
#if H5_VERSION_GE(1, 12, 0)
  return H5Fis_accessible(path.c_str(), H5P_DEFAULT) > 0;
#else
  return H5Fis_hdf5(path.c_str()) > 0;
#endif
}

// fapl / fcpl of append-mode files (see h5_file::create_append).
h5_handle append_fapl() {
  h5_handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  // 1.10 format: needed for the file-space strategy below (readers: HDF5 >= 1.10, h5py >= 2.7).
  H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_V110);
  H5AC_cache_config_t mdc{};
  mdc.version = H5AC__CURR_CACHE_CONFIG_VERSION;
  H5Pget_mdc_config(fapl.get(), &mdc);
  mdc.evictions_enabled = false;  // metadata reaches the file only at H5Fflush
  mdc.incr_mode = H5C_incr__off;
  mdc.flash_incr_mode = H5C_flash_incr__off;
  mdc.decr_mode = H5C_decr__off;
  mdc.set_initial_size = true;
  mdc.initial_size = 16u << 20;
  mdc.max_size = 64u << 20;
  mdc.min_size = 1u << 20;
  H5Pset_mdc_config(fapl.get(), &mdc);
  return fapl;
}

}  // namespace

void h5_silence_errors() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

h5_handle& h5_handle::operator=(h5_handle&& o) noexcept {
  if (this != &o) {
    reset();
    id_ = o.id_;
    closer_ = o.closer_;
    o.id_ = -1;
  }
  return *this;
}

void h5_handle::reset() {
  if (id_ >= 0 && closer_) closer_(id_);
  id_ = -1;
}

h5_file h5_file::create(const std::string& path) {
  h5_silence_errors();
  hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  KVCAL_CHECK(id >= 0, path, ": cannot create HDF5 file");
  return h5_file(path, id);
}

h5_file h5_file::open_read(const std::string& path) {
  h5_silence_errors();
  struct stat st{};
  KVCAL_CHECK(::stat(path.c_str(), &st) == 0, path, ": no such file");
  KVCAL_CHECK(is_hdf5(path), path,
              ": not an HDF5 file (or truncated / corrupt)");
  hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  KVCAL_CHECK(id >= 0, path, ": cannot open HDF5 file (truncated or corrupt?)");
  return h5_file(path, id);
}

h5_file h5_file::create_append(const std::string& path) {
  h5_silence_errors();
  h5_handle fapl = append_fapl();
  h5_handle fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
  // Allocate from the end of the file only: space freed after the last flush may still be
  // referenced by the metadata on disk, so it must never be overwritten.
  H5Pset_file_space_strategy(fcpl.get(), H5F_FSPACE_STRATEGY_NONE, 0, 1);
  hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get());
  KVCAL_CHECK(id >= 0, path, ": cannot create HDF5 file");
  return h5_file(path, id);
}

h5_file h5_file::open_append(const std::string& path) {
  h5_silence_errors();
  struct stat st{};
  KVCAL_CHECK(::stat(path.c_str(), &st) == 0, path, ": no such file");
  KVCAL_CHECK(is_hdf5(path), path, ": not an HDF5 file (or truncated / corrupt)");
  h5_handle fapl = append_fapl();
  // A killed writer leaves the 1.10 superblock's "open for writing" flag set; clear it as h5clear
  // does (a library property, present in 1.10 - 1.14).
  hbool_t clear = 1;
  H5Pset(fapl.get(), "clear_status_flags", &clear);
  hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDWR, fapl.get());
  KVCAL_CHECK(id >= 0, path, ": cannot open HDF5 file for writing (truncated or corrupt?)");
  return h5_file(path, id);
}

h5_file h5_file::open_rw(const std::string& path) {
  h5_silence_errors();
  KVCAL_CHECK(is_hdf5(path), path,
              ": not an HDF5 file (or truncated / corrupt)");
  hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  KVCAL_CHECK(id >= 0, path, ": cannot open HDF5 file for writing");
  return h5_file(path, id);
}

void h5_file::set_attr(const std::string& name, const std::string& value) {
  if (H5Aexists(id(), name.c_str()) > 0) H5Adelete(id(), name.c_str());
  h5_handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), value.empty() ? 1 : value.size());
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  h5_handle space(H5Screate(H5S_SCALAR), H5Sclose);
  h5_handle attr(H5Acreate2(id(), name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                 H5Aclose);
  KVCAL_CHECK(attr && H5Awrite(attr.get(), type.get(), value.empty() ? "" : value.data()) >= 0,
              path_, ": cannot write attribute '", name, "'");
}

void h5_file::set_attr(const std::string& name, std::int64_t value) {
  if (H5Aexists(id(), name.c_str()) > 0) H5Adelete(id(), name.c_str());
  h5_handle space(H5Screate(H5S_SCALAR), H5Sclose);
  h5_handle attr(H5Acreate2(id(), name.c_str(), H5T_STD_I64LE, space.get(), H5P_DEFAULT,
                            H5P_DEFAULT),
                 H5Aclose);
  KVCAL_CHECK(attr && H5Awrite(attr.get(), H5T_NATIVE_INT64, &value) >= 0, path_,
              ": cannot write attribute '", name, "'");
}

bool h5_file::has_attr(const std::string& name) const {
  return H5Aexists(id(), name.c_str()) > 0;
}

std::string h5_file::get_string_attr(const std::string& name) const {
  KVCAL_CHECK(has_attr(name), path_, ": missing attribute '", name, "'");
  h5_handle attr(H5Aopen(id(), name.c_str(), H5P_DEFAULT), H5Aclose);
  h5_handle type(H5Aget_type(attr.get()), H5Tclose);
  KVCAL_CHECK(H5Tget_class(type.get()) == H5T_STRING, path_, ": attribute '", name,
              "' is not a string");
  KVCAL_CHECK(H5Tis_variable_str(type.get()) <= 0, path_, ": attribute '", name,
              "' is a variable-length string (not written by kvcal)");
  size_t n = H5Tget_size(type.get());
  std::vector<char> buf(n + 1, '\0');
  KVCAL_CHECK(H5Aread(attr.get(), type.get(), buf.data()) >= 0, path_,
              ": cannot read attribute '", name, "'");
  std::string s(buf.data(), n);
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

std::int64_t h5_file::get_int_attr(const std::string& name) const {
  KVCAL_CHECK(has_attr(name), path_, ": missing attribute '", name, "'");
  h5_handle attr(H5Aopen(id(), name.c_str(), H5P_DEFAULT), H5Aclose);
  h5_handle type(H5Aget_type(attr.get()), H5Tclose);
  KVCAL_CHECK(H5Tget_class(type.get()) == H5T_INTEGER, path_, ": attribute '", name,
              "' is not an integer");
  std::int64_t v = 0;
  KVCAL_CHECK(H5Aread(attr.get(), H5T_NATIVE_INT64, &v) >= 0, path_, ": cannot read attribute '",
              name, "'");
  return v;
}

void h5_file::set_float_attr(const std::string& name, double value) {
  if (H5Aexists(id(), name.c_str()) > 0) H5Adelete(id(), name.c_str());
  h5_handle space(H5Screate(H5S_SCALAR), H5Sclose);
  h5_handle attr(H5Acreate2(id(), name.c_str(), H5T_IEEE_F64LE, space.get(), H5P_DEFAULT,
                            H5P_DEFAULT),
                 H5Aclose);
  KVCAL_CHECK(attr && H5Awrite(attr.get(), H5T_NATIVE_DOUBLE, &value) >= 0, path_,
              ": cannot write attribute '", name, "'");
}

double h5_file::get_float_attr(const std::string& name) const {
  KVCAL_CHECK(has_attr(name), path_, ": missing attribute '", name, "'");
  h5_handle attr(H5Aopen(id(), name.c_str(), H5P_DEFAULT), H5Aclose);
  h5_handle type(H5Aget_type(attr.get()), H5Tclose);
  const H5T_class_t c = H5Tget_class(type.get());
  KVCAL_CHECK(c == H5T_FLOAT || c == H5T_INTEGER, path_, ": attribute '", name,
              "' is not a number");
  double v = 0;
  KVCAL_CHECK(H5Aread(attr.get(), H5T_NATIVE_DOUBLE, &v) >= 0, path_,
              ": cannot read attribute '", name, "'");
  return v;
}

std::int64_t h5_file::file_size() const {
  hsize_t n = 0;
  KVCAL_CHECK(H5Fget_filesize(id(), &n) >= 0, path_, ": cannot get the file size");
  return static_cast<std::int64_t>(n);
}

void h5_file::flush() {
  KVCAL_CHECK(H5Fflush(id(), H5F_SCOPE_GLOBAL) >= 0, path_, ": flush failed");
}

}  // namespace kvcal
