// Decode steps replayed from a CUDA graph: the forward of one token through a graph-safe cache
// (kv_cache::graph_safe(): model/static_cache.h, or model/gpu_packed_cache.h in every mode) is
// captured once and replayed for every later step, which removes libtorch's per-op host cost
// (~0.25 ms per layer and step, docs/BENCHMARKS.md) from decode. Same math as
// llama_model::forward through that cache; the prefill runs eagerly.
//
// The first step() runs eagerly on a side stream (it is also the warm-up: lazy cuBLAS /
// allocator setup), then the next step is captured but not run (capture records only), with the
// token ids and the position read from device buffers that later steps overwrite in place; the
// cache's host bookkeeping is set back after the capture and after each replay
// (kv_cache::set_host_length). Needs libtorch with CUDA (elsewhere the constructor throws);
// dynamic RoPE is refused (its frequencies depend on the host-side length).
//
//   kvcal::decode_graph g(model, /*batch=*/1, /*capacity=*/4096 + 256);   // its own static_cache
//   kvcal::decode_graph h(model, packed_cache, /*batch=*/8);               // the caller's cache
//   at::Tensor logits = g.prefill(prompt);                  // [B, 1, V] of the last token
//   for (...) logits = g.step(next_ids);                    // [B, 1] -> [B, 1, V]
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>

#include "model/llama.h"

namespace kvcal {

class decode_graph {
 public:
  // Over its own static_cache of `capacity` tokens.
  decode_graph(const llama_model& model, std::int64_t batch, std::int64_t capacity);
  // Over `cache` (graph safe, batch rows; it must outlive this object and be driven through it
  // from now on: an eager forward through it in between is fine, the graph reads the device
  // state).
  decode_graph(const llama_model& model, kv_cache& cache, std::int64_t batch);
  ~decode_graph();
  decode_graph(const decode_graph&) = delete;
  decode_graph& operator=(const decode_graph&) = delete;

  // Eager forward of ids [B, T] at the current length; returns the last position's logits.
  at::Tensor prefill(const at::Tensor& ids);
  // One token per row, ids [B, 1] (any device). Returns float logits [B, 1, V], from the second
  // step on held in a buffer that the next step overwrites (copy them to keep them).
  at::Tensor step(const at::Tensor& ids);
  std::int64_t length() const;
  // Forgets every token of the cache; the captured step stays valid (same buffers).
  void reset();
  // Whether the step has been captured (after the first step()).
  bool captured() const;
  // Whether this build can capture graphs (libtorch with CUDA).
  static bool available();

 private:
  struct impl;
  std::unique_ptr<impl> p_;
};

}  // namespace kvcal
