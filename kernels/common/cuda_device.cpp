#include "kernels/common/cuda_device.h"

#ifdef KVCAL_WITH_CUDA
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cmath>

#include <vector>

#include "kernels/common/device_check.h"
#endif

#include "kernels/common/error.h"

namespace kvcal {

#ifdef KVCAL_WITH_CUDA
int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

std::string cuda_device_summary() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return detail::concat("no usable GPU (", cudaGetErrorString(e), "); CPU paths in use");
  }
  std::string s = detail::concat(n, " GPU(s):");
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) == cudaSuccess)
      s += detail::concat(" [", i, "] ", p.name, " sm_", p.major, p.minor, " ",
                          p.totalGlobalMem >> 20, " MiB");
  }
  return s;
}

std::string cuda_self_test() {
  if (cuda_device_count() == 0) return "no CUDA device";
  constexpr int n = 1000;  // not a multiple of the block size on purpose
  int* d = nullptr;
  cudaError_t e = cudaMalloc(&d, n * sizeof(int));
  if (e != cudaSuccess) return detail::concat("cudaMalloc: ", cudaGetErrorString(e));
  iota_params p{d, n, 7};
  e = launch_iota(p, nullptr);
  std::vector<int> h(n, -1);
  if (e == cudaSuccess) e = cudaMemcpy(h.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost);
  cudaFree(d);
  if (e != cudaSuccess) return detail::concat("iota kernel: ", cudaGetErrorString(e));
  for (int i = 0; i < n; ++i)
    if (h[i] != 7 + i) return detail::concat("iota kernel wrote ", h[i], " at ", i);
  return {};
}

std::string cusolver_self_test() {
  if (cuda_device_count() == 0) return "no CUDA device";
  cusolverDnHandle_t h = nullptr;
  if (cusolverDnCreate(&h) != CUSOLVER_STATUS_SUCCESS) return "cusolverDnCreate failed";
  // Tridiagonal [2 -1 0; -1 2 -1; 0 -1 2]: eigenvalues 2 - sqrt(2), 2, 2 + sqrt(2).
  const float a[9] = {2, -1, 0, -1, 2, -1, 0, -1, 2};
  float *d_a = nullptr, *d_w = nullptr, *d_work = nullptr;
  int* d_info = nullptr;
  int lwork = 0, info = -1;
  float w[3] = {0, 0, 0};
  std::string fail;
  if (cudaMalloc(&d_a, sizeof a) != cudaSuccess || cudaMalloc(&d_w, sizeof w) != cudaSuccess ||
      cudaMalloc(&d_info, sizeof(int)) != cudaSuccess)
    fail = "cudaMalloc failed";
  if (fail.empty() && cudaMemcpy(d_a, a, sizeof a, cudaMemcpyHostToDevice) != cudaSuccess)
    fail = "cudaMemcpy failed";
  if (fail.empty() && cusolverDnSsyevd_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR,
                                                  CUBLAS_FILL_MODE_LOWER, 3, d_a, 3, d_w,
                                                  &lwork) != CUSOLVER_STATUS_SUCCESS)
    fail = "cusolverDnSsyevd_bufferSize failed";
  if (fail.empty() && cudaMalloc(&d_work, sizeof(float) * (lwork > 0 ? lwork : 1)) != cudaSuccess)
    fail = "cudaMalloc (workspace) failed";
  if (fail.empty() && cusolverDnSsyevd(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, 3, d_a,
                                       3, d_w, d_work, lwork, d_info) != CUSOLVER_STATUS_SUCCESS)
    fail = "cusolverDnSsyevd failed";
  if (fail.empty() && (cudaMemcpy(w, d_w, sizeof w, cudaMemcpyDeviceToHost) != cudaSuccess ||
                       cudaMemcpy(&info, d_info, sizeof info, cudaMemcpyDeviceToHost) != cudaSuccess))
    fail = "cudaMemcpy back failed";
  cudaFree(d_a);
  cudaFree(d_w);
  cudaFree(d_work);
  cudaFree(d_info);
  cusolverDnDestroy(h);
  if (!fail.empty()) return fail;
  if (info != 0) return detail::concat("syevd info = ", info);
  const float expect[3] = {2.0f - std::sqrt(2.0f), 2.0f, 2.0f + std::sqrt(2.0f)};
  for (int i = 0; i < 3; ++i)
    if (std::fabs(w[i] - expect[i]) > 1e-5f)
      return detail::concat("eigenvalue ", i, " = ", w[i], ", expected ", expect[i]);
  return {};
}
#else
std::string cusolver_self_test() { return "built without CUDA"; }
int cuda_device_count() { return 0; }
std::string cuda_device_summary() { return "built without CUDA; CPU paths in use"; }
std::string cuda_self_test() { return "built without CUDA"; }
#endif

}  // namespace kvcal
