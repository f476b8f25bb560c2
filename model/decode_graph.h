// Decode steps replayed from a CUDA graph: the forward of one token through a static_cache
// (model/static_cache.h) is captured once per batch and replayed for every later step, which
// removes libtorch's per-op host cost (~0.25 ms per layer and step, docs/BENCHMARKS.md) from
// decode. Same math as llama_model::forward with the static cache; the prefill runs eagerly.
// Needs libtorch with CUDA (elsewhere the constructor throws); dynamic RoPE is refused (its
// frequencies depend on the host-side length).
//
//   kvcal::decode_graph g(model, /*batch=*/1, /*capacity=*/4096 + 256);
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
  decode_graph(const llama_model& model, std::int64_t batch, std::int64_t capacity);
  ~decode_graph();
  decode_graph(const decode_graph&) = delete;
  decode_graph& operator=(const decode_graph&) = delete;

  // Eager forward of ids [B, T] at the current length; returns the last position's logits.
  at::Tensor prefill(const at::Tensor& ids);
  // One token per row, ids [B, 1] (any device). Returns float logits [B, 1, V] held in a buffer
  // that the next step overwrites (copy them to keep them).
  at::Tensor step(const at::Tensor& ids);
  std::int64_t length() const;
  void reset();
  // Whether this build can capture graphs (libtorch with CUDA).
  static bool available();

 private:
  struct impl;
  std::unique_ptr<impl> p_;
};

}  // namespace kvcal
