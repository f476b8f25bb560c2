// Builds without CUDA: the GPU accumulator exists but refuses to start.
#include "calibrate/covariance_gpu.h"
#include "kernels/common/error.h"

#ifndef KVCAL_WITH_CUDA
namespace kvcal {

struct cov_accumulator_gpu::impl {};

bool covariance_gpu_compiled() {
  return false;
}

cov_accumulator_gpu::cov_accumulator_gpu(std::int64_t, std::int64_t, bool, std::int64_t,
                                         std::int64_t, cov_gpu_math) {
  KVCAL_FAIL("GPU covariance: this build has no CUDA");
}
cov_accumulator_gpu::~cov_accumulator_gpu() = default;
void cov_accumulator_gpu::add_host(const float*, std::int64_t, std::int64_t) {}
void cov_accumulator_gpu::add_device(const float*, std::int64_t, std::int64_t) {}
void cov_accumulator_gpu::add_host_half(const std::uint16_t*, std::int64_t, std::int64_t) {}
void cov_accumulator_gpu::add_device_half(const std::uint16_t*, std::int64_t, std::int64_t) {}
void cov_accumulator_gpu::set_split_chunk(std::int64_t) {}
bool cov_accumulator_gpu::half_kernel_supports(std::int64_t) {
  return false;
}
void cov_accumulator_gpu::synchronize() {}
std::vector<cov_stats> cov_accumulator_gpu::download(std::int64_t) {
  return {};
}

}  // namespace kvcal
#endif
