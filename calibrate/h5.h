// Thin RAII layer over the HDF5 C API, shared by every kvcal HDF5 format (capture, pca).
//
// HDF5's own error stack printing is turned off; failures become one kvcal::error naming the file
// and the object. Only what kvcal's formats need: files, groups, string / integer attributes.
//
//   auto f = kvcal::h5_file::create(out.temp_path());
//   f.set_attr("format", "kvcal.capture");  f.set_attr("version", 1);
//   auto g = kvcal::h5_file::open_read("capture.h5");   // clear error if not HDF5
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <hdf5.h>

namespace kvcal {

// Owns one hid_t and closes it with the right H5*close.
class h5_handle {
 public:
  h5_handle() = default;
  h5_handle(hid_t id, herr_t (*closer)(hid_t)) : id_(id), closer_(closer) {}
  ~h5_handle() { reset(); }
  h5_handle(h5_handle&& o) noexcept : id_(o.id_), closer_(o.closer_) { o.id_ = -1; }
  h5_handle& operator=(h5_handle&& o) noexcept;
  h5_handle(const h5_handle&) = delete;
  h5_handle& operator=(const h5_handle&) = delete;
  hid_t get() const { return id_; }
  explicit operator bool() const { return id_ >= 0; }
  void reset();

 private:
  hid_t id_ = -1;
  herr_t (*closer_)(hid_t) = nullptr;
};

class h5_file {
 public:
  static h5_file create(const std::string& path);     // truncates
  static h5_file open_read(const std::string& path);  // checks it exists and is HDF5
  static h5_file open_rw(const std::string& path);
  // For files that grow by appends and must survive a kill (capture): metadata reaches the disk
  // only at flush() (metadata-cache evictions off) and freed space is never reused, so a process
  // killed between two flushes leaves the file as of the last flush (docs/formats/capture.md).
  static h5_file create_append(const std::string& path);  // truncates
  static h5_file open_append(const std::string& path);

  const std::string& path() const { return path_; }
  hid_t id() const { return file_.get(); }

  void set_attr(const std::string& name, const std::string& value);
  void set_attr(const std::string& name, std::int64_t value);
  bool has_attr(const std::string& name) const;
  std::string get_string_attr(const std::string& name) const;
  std::int64_t get_int_attr(const std::string& name) const;
  // Float attributes, stored as IEEE f64 (separate names: set_attr(name, 1) stays unambiguous).
  void set_float_attr(const std::string& name, double value);
  double get_float_attr(const std::string& name) const;
  void flush();
  std::int64_t file_size() const;  // bytes, as HDF5 reports them

 private:
  h5_file(std::string path, hid_t id) : path_(std::move(path)), file_(id, H5Fclose) {}
  std::string path_;
  h5_handle file_;
};

// Silences HDF5's automatic error printing for the whole process (idempotent).
void h5_silence_errors();

}  // namespace kvcal
