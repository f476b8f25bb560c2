// Bridges between kvcal's plain types and libtorch: safetensors tensors -> at::Tensor, and the
// --device / --dtype option values used by every command that runs the model.
#pragma once

#include <string>

#include <ATen/ATen.h>

#include "runtime/io/safetensors.h"

namespace kvcal {

// Copies a safetensors tensor into a new CPU tensor of the same dtype and shape.
at::Tensor to_tensor(const tensor_view& t);

// "cpu" | "cuda" | "cuda:N"; throws naming `option` when invalid or when CUDA is unavailable.
at::Device parse_device(const std::string& value, const std::string& option = "--device");
// "fp32" | "bf16" | "fp16" (also "float32", "bfloat16", "float16").
at::ScalarType parse_compute_dtype(const std::string& value, const std::string& option = "--dtype");
const char* compute_dtype_name(at::ScalarType t);

}  // namespace kvcal
