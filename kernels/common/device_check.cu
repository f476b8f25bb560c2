#include "kernels/common/device_check.h"

namespace kvcal {

__global__ void iota_kernel(iota_params p) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < p.n) p.out[i] = p.start + i;
}

cudaError_t launch_iota(const iota_params& p, cudaStream_t stream) {
  if (p.n <= 0) return cudaSuccess;
  constexpr int block = 256;
  iota_kernel<<<(p.n + block - 1) / block, block, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace kvcal
