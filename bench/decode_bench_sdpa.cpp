// torch SDPA FP16 baseline of bench/decode_bench.h, timed like the kernels (cudaEvents on the
// current stream, L2 flushed before each call, median of reps after 5 warm-up calls).
// Compiled into every build; the baseline runs where libtorch has CUDA (KVCAL_TORCH_CUDA, set
// by CMake) and SDPA with enable_gqa (torch >= 2.5).
#include <ATen/ATen.h>
#include <torch/version.h>

#include <algorithm>
#include <vector>

#include "bench/decode_bench.h"
#include "kernels/common/error.h"

#if KVCAL_TORCH_CUDA && \
    (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5))
#define KVCAL_SDPA_BASELINE 1
#include <ATen/cuda/CUDAContext.h>
#include <cuda_runtime.h>
#endif

namespace kvcal {

#ifndef KVCAL_SDPA_BASELINE
decode_timing time_sdpa_fp16(const decode_shape&) {
  KVCAL_FAIL(
      "torch SDPA baseline: this kvcal's libtorch has no CUDA or no SDPA with GQA "
      "(torch >= 2.5 with CUDA: scripts/build-gpu.sh)");
}
#else
decode_timing time_sdpa_fp16(const decode_shape& s) {
  KVCAL_CHECK(at::hasCUDA(), "decode bench: torch SDPA baseline needs a CUDA device");
  const auto opt = at::TensorOptions().dtype(at::kHalf).device(at::kCUDA);
  at::Tensor q = at::randn({s.batch, s.n_heads, 1, s.head_dim}, opt);
  at::Tensor k = at::randn({s.batch, s.n_kv, s.len, s.head_dim}, opt);
  at::Tensor v = at::randn({s.batch, s.n_kv, s.len, s.head_dim}, opt);
  at::Tensor flush = at::empty({128 << 20}, opt.dtype(at::kByte));
  auto step = [&] {
    return at::scaled_dot_product_attention(q, k, v, {}, 0.0, false, std::nullopt,
                                            /*enable_gqa=*/true);
  };
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  cudaEvent_t e0, e1;
  KVCAL_CHECK(cudaEventCreate(&e0) == cudaSuccess && cudaEventCreate(&e1) == cudaSuccess,
              "decode bench: cudaEventCreate failed");
  std::vector<float> times;
  for (int i = 0; i < s.reps + 5; ++i) {
    flush.fill_(i & 0xff);
    cudaEventRecord(e0, stream);
    at::Tensor o = step();
    cudaEventRecord(e1, stream);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (i >= 5) times.push_back(ms);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(times.begin(), times.end());
  decode_timing t;
  t.us = 1000.0 * times[times.size() / 2];
  const double kv = 2.0 * s.batch * s.n_kv * static_cast<double>(s.len) * s.head_dim * 2;
  t.fp16_bytes = kv;
  t.bytes = kv + 2.0 * s.batch * s.n_heads * s.head_dim * 2;
  return t;
}
#endif

}  // namespace kvcal
