#include "model/torch_util.h"

#include <cstring>

#include "kernels/common/error.h"

namespace kvcal {
namespace {

at::ScalarType scalar_type(st_dtype t) {
  switch (t) {
    case st_dtype::BOOL:
      return at::kBool;
    case st_dtype::U8:
      return at::kByte;
    case st_dtype::I8:
      return at::kChar;
    case st_dtype::I16:
      return at::kShort;
    case st_dtype::I32:
      return at::kInt;
    case st_dtype::I64:
      return at::kLong;
    case st_dtype::F16:
      return at::kHalf;
    case st_dtype::BF16:
      return at::kBFloat16;
    case st_dtype::F32:
      return at::kFloat;
    case st_dtype::F64:
      return at::kDouble;
  }
  KVCAL_ASSERT(false, "unhandled st_dtype");
  return at::kFloat;
}

}  // namespace

at::Tensor to_tensor(const tensor_view& t) {
  std::vector<int64_t> shape(t.shape.begin(), t.shape.end());
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(scalar_type(t.dtype)));
  if (t.nbytes > 0) std::memcpy(out.data_ptr(), t.data, t.nbytes);
  return out;
}

at::Device parse_device(const std::string& value, const std::string& option) {
  if (value == "cpu") return at::Device(at::kCPU);
  if (value == "cuda" || value.rfind("cuda:", 0) == 0) {
    KVCAL_CHECK(at::hasCUDA(), option, " ", value,
                ": this build's libtorch has no CUDA or no GPU is visible; use --device cpu");
    int index = 0;
    if (value.size() > 5) {
      try {
        index = std::stoi(value.substr(5));
      } catch (const std::exception&) {
        KVCAL_FAIL(option, " ", value, ": expected cuda:N");
      }
    }
    return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  KVCAL_FAIL(option, " ", value, ": expected cpu, cuda or cuda:N");
}

at::ScalarType parse_compute_dtype(const std::string& value, const std::string& option) {
  if (value == "fp32" || value == "float32") return at::kFloat;
  if (value == "bf16" || value == "bfloat16") return at::kBFloat16;
  if (value == "fp16" || value == "float16") return at::kHalf;
  KVCAL_FAIL(option, " ", value, ": expected fp32, bf16 or fp16");
}

const char* compute_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "fp32";
    case at::kBFloat16:
      return "bf16";
    case at::kHalf:
      return "fp16";
    default:
      return "unsupported";
  }
}

void tensor_views_f32::add(const std::string& name, const at::Tensor& t) {
  keep.push_back(t.contiguous());
  tensor_view v;
  v.name = name;
  v.dtype = st_dtype::F32;
  v.shape = t.sizes().vec();
  v.data = reinterpret_cast<const std::uint8_t*>(keep.back().data_ptr<float>());
  v.nbytes = static_cast<std::size_t>(keep.back().nbytes());
  views.push_back(v);
}

}  // namespace kvcal
