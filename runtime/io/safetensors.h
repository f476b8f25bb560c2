// Safetensors reader (memory-mapped, fully validated) and writer.
//
// File layout (https://github.com/huggingface/safetensors):
//   [u64 little-endian N] [N bytes: JSON header, may end in spaces] [data buffer]
//   header = { "__metadata__": {str: str}?,                       (optional, strings only)
//              "<name>": {"dtype": "F32", "shape": [d0, ...],     (dims >= 0; [] is a scalar)
//                         "data_offsets": [begin, end]} ... }     (relative to the data buffer)
// Validation (every failure is one kvcal::error naming the file, and the tensor when there is
// one): N <= file size - 8 and <= 100 MiB; header is a JSON object; no duplicate names; known
// dtype; end - begin == numel x dtype size; offsets inside the buffer; tensors neither overlap
// nor leave holes (the whole buffer is indexed, as the reference implementation requires).
// kvcal itself never writes NaN checks here: values are bytes at this level.
//
//   kvcal::safetensors_file f("model.safetensors");
//   const auto& t = f.at("model.embed_tokens.weight");   // dtype, shape, data (unaligned)
//   std::vector<float> w = kvcal::to_float(t);
//   kvcal::write_safetensors("out.safetensors", {{"x", st_dtype::F32, {2, 3}, ptr}}, {{"k", "v"}});
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "runtime/io/mapped_file.h"

namespace kvcal {

// Values only ever appended (the order is not on disk: names are).
enum class st_dtype : std::uint8_t { BOOL, U8, I8, I16, I32, I64, F16, BF16, F32, F64 };

std::size_t dtype_size(st_dtype t);
const char* dtype_name(st_dtype t);
// Returns false when `name` is not a known dtype.
bool parse_dtype(const std::string& name, st_dtype* out);

struct tensor_view {
  std::string name;
  st_dtype dtype = st_dtype::F32;
  std::vector<std::int64_t> shape;
  const std::uint8_t* data = nullptr;  // may be unaligned; read through memcpy / to_float
  std::size_t nbytes = 0;
  std::int64_t numel() const;
};

// Converts a floating-point tensor (F16, BF16, F32, F64) to float. Other dtypes: kvcal::error.
std::vector<float> to_float(const tensor_view& t);
// Same, into caller memory of t.numel() floats.
void to_float(const tensor_view& t, float* out);

class safetensors_file {
 public:
  explicit safetensors_file(const std::string& path);

  const std::string& path() const { return file_.path(); }
  // In data-buffer order.
  const std::vector<tensor_view>& tensors() const { return tensors_; }
  const tensor_view* find(const std::string& name) const;
  // Throws "<path>: no tensor '<name>'".
  const tensor_view& at(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::size_t file_size() const { return file_.size(); }

 private:
  mapped_file file_;
  std::vector<tensor_view> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write; `data` points at numel x dtype_size bytes in host memory.
struct tensor_out {
  std::string name;
  st_dtype dtype;
  std::vector<std::int64_t> shape;
  const void* data;
};

// Writes atomically (NAME.partial, fsync, rename). Tensors are stored in the given order; names
// must be unique and not "__metadata__". The header is padded to a multiple of 8 bytes.
void write_safetensors(const std::string& path, const std::vector<tensor_out>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// The header bytes (length prefix included) that write_safetensors would write; for tests.
std::string safetensors_header(const std::vector<tensor_out>& tensors,
                               const std::map<std::string, std::string>& metadata);

}  // namespace kvcal
