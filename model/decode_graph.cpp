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
  impl(const llama_model& m, kv_cache& c, std::int64_t batch) : model(m), cache(&c) {
    auto lopt = at::TensorOptions().dtype(at::kLong).device(m.device());
    ids = at::zeros({batch, 1}, lopt);
    pos = at::zeros({1}, lopt);
  }
  const llama_model& model;
  std::unique_ptr<static_cache> owned;  // the constructor with a capacity
  kv_cache* cache;
  at::Tensor ids, pos, logits;  // static buffers the graph reads / writes
  std::unique_ptr<at::cuda::CUDAGraph> graph;
};

bool decode_graph::available() {
  return at::hasCUDA();
}

namespace {

void check_model(const llama_model& model) {
  KVCAL_CHECK(model.device().is_cuda(), "decode_graph: the model must be on CUDA");
  KVCAL_CHECK(model.config().rope.type != rope_type::dynamic,
              "decode_graph: dynamic RoPE is not supported (host-dependent frequencies)");
}

}  // namespace

decode_graph::decode_graph(const llama_model& model, std::int64_t batch, std::int64_t capacity) {
  check_model(model);
  auto c = std::make_unique<static_cache>(model.config(), batch, capacity, model.device(),
                                          model.dtype());
  p_ = std::make_unique<impl>(model, *c, batch);
  p_->owned = std::move(c);
}

decode_graph::decode_graph(const llama_model& model, kv_cache& cache, std::int64_t batch) {
  check_model(model);
  KVCAL_CHECK(cache.graph_safe(),
              "decode_graph: this KV cache's decode step is not graph safe (host-side state in "
              "its launches)");
  KVCAL_CHECK(batch >= 1, "decode_graph: batch ", batch, " must be >= 1");
  p_ = std::make_unique<impl>(model, cache, batch);
}

decode_graph::~decode_graph() = default;

at::Tensor decode_graph::prefill(const at::Tensor& ids) {
  return p_->model.forward(ids, *p_->cache, {logits_mode::last});
}

at::Tensor decode_graph::step(const at::Tensor& ids) {
  impl& p = *p_;
  const std::int64_t len = p.cache->length(), cap = p.cache->graph_capacity();
  KVCAL_CHECK(len < cap, "decode_graph: capacity ", cap, " reached");
  KVCAL_CHECK(ids.sizes() == p.ids.sizes(), "decode_graph: ids must be ", p.ids.sizes(), ", got ",
              ids.sizes());
  p.ids.copy_(ids);
  p.pos.fill_(len);
  if (p.graph) {
    p.graph->replay();
    p.cache->set_host_length(len + 1);
    return p.logits;
  }
  forward_options o;
  o.logits = logits_mode::last;
  o.maybe_positions = p.pos;
  // This step eagerly on a side stream (the warm-up), then the next one captured there: capture
  // records without running, so the cache's device state is that of this step, and its host
  // bookkeeping (advanced by the capture's host code) is set back.
  KVCAL_CHECK(cudaDeviceSynchronize() == cudaSuccess,
              "decode_graph: CUDA error before capture: ", cudaGetErrorString(cudaGetLastError()));
  c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool();
  at::Tensor out;
  {
    c10::cuda::CUDAStreamGuard guard(stream);
    out = p.model.forward(p.ids, *p.cache, o);
    stream.synchronize();
    if (len + 1 >= cap) return out;  // the last slot: nothing left to capture for
    auto graph = std::make_unique<at::cuda::CUDAGraph>();
    graph->capture_begin();
    try {
      p.logits = p.model.forward(p.ids, *p.cache, o);
    } catch (...) {  // no graph is kept; the stream leaves capture mode
      p.cache->set_host_length(len + 1);
      try {
        graph->capture_end();
      } catch (...) {
      }
      throw;
    }
    graph->capture_end();
    p.cache->set_host_length(len + 1);
    p.graph = std::move(graph);
  }
  KVCAL_CHECK(cudaDeviceSynchronize() == cudaSuccess,
              "decode_graph: CUDA error after capture: ", cudaGetErrorString(cudaGetLastError()));
  return out;
}

std::int64_t decode_graph::length() const {
  return p_->cache->length();
}
void decode_graph::reset() {
  p_->cache->reset();
}
bool decode_graph::captured() const {
  return p_->graph != nullptr;
}

#else  // libtorch without CUDA

struct decode_graph::impl {};
bool decode_graph::available() {
  return false;
}
decode_graph::decode_graph(const llama_model&, std::int64_t, std::int64_t) {
  KVCAL_FAIL("decode_graph: this build's libtorch has no CUDA");
}
decode_graph::decode_graph(const llama_model&, kv_cache&, std::int64_t) {
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
bool decode_graph::captured() const {
  return false;
}

#endif

}  // namespace kvcal
