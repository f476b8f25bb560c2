// A trivial kernel (out[i] = start + i) used to check that CUDA code compiled by this build runs
// on the machine's GPU. Follows the kernels/ layering: params struct + host launcher.
#pragma once

#include <cuda_runtime.h>

namespace kvcal {

struct iota_params {
  int* out;   // [n] device memory
  int n;
  int start;
};

cudaError_t launch_iota(const iota_params& p, cudaStream_t stream);

}  // namespace kvcal
