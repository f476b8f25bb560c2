// Bridges between kvcal's plain types and libtorch: safetensors tensors -> at::Tensor, and the
// --device / --dtype option values used by every command that runs the model.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "runtime/io/safetensors.h"

namespace kvcal {

// Copies a safetensors tensor into a new CPU tensor of the same dtype and shape.
at::Tensor to_tensor(const tensor_view& t);

// "cpu" | "cuda" | "cuda:N"; throws naming `option` when invalid or when CUDA is unavailable.
at::Device parse_device(const std::string& value, const std::string& option = "--device");
// "fp32" | "bf16" | "fp16" (also "float32", "bfloat16", "float16").
at::ScalarType parse_compute_dtype(const std::string& value, const std::string& option = "--dtype");
const char* compute_dtype_name(at::ScalarType t);

// The reverse: fp32 tensors as F32 tensor_views (synthetic preset weights for tests and
// benchmarks), holding the contiguous copies the views point into.
struct tensor_views_f32 {
  std::vector<at::Tensor> keep;    // contiguous copies, one per view
  std::vector<tensor_view> views;  // [i] points into keep[i]
  // Appends a view named `name` of a contiguous copy of t (fp32, any shape).
  void add(const std::string& name, const at::Tensor& t);
};

}  // namespace kvcal
