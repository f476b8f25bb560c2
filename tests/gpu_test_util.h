// Helpers shared by the raw-CUDA test binaries (test_kernels_gpu, test_evict_gpu,
// test_kv_step_gpu): skip without a device, launch checks naming the launcher's message, a
// zero-filled device buffer freed at scope exit, and one decode-attention run.
//   dbuf<float> d(host);  launch_x(...);  std::vector<float> back = d.download();
#pragma once

#include <cuda_runtime.h>
#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/common/cuda_device.h"
#include "kernels/cuda/decode_attention.h"

// Passes the test case with a message when the machine has no CUDA device.
#define SKIP_WITHOUT_GPU()                 \
  do {                                     \
    if (kvcal::cuda_device_count() <= 0) { \
      MESSAGE("no CUDA device: skipped");  \
      return;                              \
    }                                      \
  } while (0)

#define CUDA_OK(expr) \
  REQUIRE_MESSAGE((expr) == cudaSuccess, #expr, ": ", kvcal::last_launch_error())

namespace kvcal::test {

// Device buffer of T (count elements, at least one allocated), zero-filled, freed at scope exit.
template <typename T>
struct dbuf {
  T* p = nullptr;
  std::size_t n = 0;
  explicit dbuf(std::size_t count) : n(count) {
    REQUIRE(cudaMalloc(&p, std::max<std::size_t>(count, 1) * sizeof(T)) == cudaSuccess);
    REQUIRE(cudaMemset(p, 0, std::max<std::size_t>(count, 1) * sizeof(T)) == cudaSuccess);
  }
  explicit dbuf(const std::vector<T>& h) : dbuf(h.size()) { upload(h); }
  ~dbuf() { cudaFree(p); }
  dbuf(const dbuf&) = delete;
  dbuf& operator=(const dbuf&) = delete;
  void upload(const std::vector<T>& h) {
    REQUIRE(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  std::vector<T> download() const {
    std::vector<T> h(n);
    REQUIRE(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return h;
  }
};

// Sizes and allocates p's workspace (freed on return; the caller's p is not changed), launches
// decode attention on the default stream and waits for it.
inline void run_decode_attention(decode_attention_params p) {
  const std::size_t ws = decode_attention_workspace_size(p);
  dbuf<std::uint8_t> dws(ws);
  p.workspace = dws.p;
  p.workspace_bytes = ws;
  CUDA_OK(launch_decode_attention(p, nullptr));
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
}

}  // namespace kvcal::test
