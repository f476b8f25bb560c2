#include "model/decode_graph.h"

#include "kernels/common/error.h"
#include "model/static_cache.h"

#if KVCAL_TORCH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace kvcal {

#if KVCAL_TORCH_CUDA

struct decode_graph::impl {
  impl(const llama_model& m, std::int64_t batch, std::int64_t capacity)
      : model(m), cache(m.config(), batch, capacity, m.device(), m.dtype()) {
    auto lopt = at::TensorOptions().dtype(at::kLong).device(m.device());
    ids = at::zeros({batch, 1}, lopt);
    pos = at::zeros({1}, lopt);
  }
  const llama_model& model;
  static_cache cache;
  at::Tensor ids, pos, logits;  // static buffers the graph reads / writes
  std::unique_ptr<at::cuda::CUDAGraph> graph;
};

bool decode_graph::available() {
  return at::hasCUDA();
}

decode_graph::decode_graph(const llama_model& model, std::int64_t batch, std::int64_t capacity) {
  KVCAL_CHECK(model.device().is_cuda(), "decode_graph: the model must be on CUDA");
  KVCAL_CHECK(model.config().rope.type != rope_type::dynamic,
              "decode_graph: dynamic RoPE is not supported (host-dependent frequencies)");
  p_ = std::make_unique<impl>(model, batch, capacity);
}

decode_graph::~decode_graph() = default;

at::Tensor decode_graph::prefill(const at::Tensor& ids) {
  return p_->model.forward(ids, p_->cache, {logits_mode::last});
}

at::Tensor decode_graph::step(const at::Tensor& ids) {
  impl& p = *p_;
  const std::int64_t len = p.cache.length();
  KVCAL_CHECK(len < p.cache.capacity(), "decode_graph: capacity ", p.cache.capacity(), " reached");
  KVCAL_CHECK(ids.sizes() == p.ids.sizes(), "decode_graph: ids must be ", p.ids.sizes(), ", got ",
              ids.sizes());
  p.ids.copy_(ids);
  p.pos.fill_(len);
  if (!p.graph) {
    forward_options o;
    o.logits = logits_mode::last;
    o.maybe_positions = p.pos;
    // Capture on a side stream after one eager warm-up there (lazy cuBLAS / allocator setup).
    // Both runs write this step's K/V at `len`, so they are idempotent.
    KVCAL_CHECK(cudaDeviceSynchronize() == cudaSuccess, "decode_graph: CUDA error before capture: ",
                cudaGetErrorString(cudaGetLastError()));
    c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool();
    {
      c10::cuda::CUDAStreamGuard guard(stream);
      p.logits = p.model.forward(p.ids, p.cache, o);
      p.cache.set_length(len);
      stream.synchronize();
      p.graph = std::make_unique<at::cuda::CUDAGraph>();
      p.graph->capture_begin();
      p.logits = p.model.forward(p.ids, p.cache, o);
      p.graph->capture_end();
      p.cache.set_length(len);
    }
    KVCAL_CHECK(cudaDeviceSynchronize() == cudaSuccess,
                "decode_graph: CUDA error after capture: ", cudaGetErrorString(cudaGetLastError()));
  }
  p.graph->replay();
  p.cache.set_length(len + 1);
  return p.logits;
}

std::int64_t decode_graph::length() const {
  return p_->cache.length();
}
void decode_graph::reset() {
  p_->cache.reset();
}

#else  // libtorch without CUDA

struct decode_graph::impl {};
bool decode_graph::available() {
  return false;
}
decode_graph::decode_graph(const llama_model&, std::int64_t, std::int64_t) {
  KVCAL_FAIL("decode_graph: this build's libtorch has no CUDA");
}
decode_graph::~decode_graph() = default;
at::Tensor decode_graph::prefill(const at::Tensor&) {
  KVCAL_FAIL("decode_graph: no CUDA");
}
at::Tensor decode_graph::step(const at::Tensor&) {
  KVCAL_FAIL("decode_graph: no CUDA");
}
std::int64_t decode_graph::length() const {
  return 0;
}
void decode_graph::reset() {}

#endif

}  // namespace kvcal
