// A full-precision KV cache of fixed capacity whose one-token step has fixed shapes and needs no
// host value that changes between steps, so a decode step through it can be captured once in a
// CUDA graph and replayed (model/decode_graph.h).
//
//   append  K (after RoPE) / V are written with index_copy_ at the positions tensor (on device)
//   attend  T == 1: explicit attention over the whole capacity, keys masked by comparing their
//           slot with the query position on the device (positions <= p, and > p - window);
//           T > 1 (prefill, not captured): the causal path of full_cache over the held tokens.
// Buffers start zeroed so that unwritten slots hold finite values (they are masked, and 0 x 0
// must not become NaN). Host lengths are bookkept as in full_cache; a graph replay does not run
// host code, so its driver sets the length after each replay (set_length).
//
//   kvcal::static_cache cache(cfg, /*batch=*/1, /*capacity=*/4200, at::kCUDA, at::kBFloat16);
//   model.forward(prompt, cache);                           // prefill (positions 0..T-1)
//   model.forward(tok, cache, {kvcal::logits_mode::last});  // one step, graph-capturable
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "model/cache_shape.h"
#include "model/kv_cache.h"
#include "runtime/model_config.h"

namespace kvcal {

class static_cache : public kv_cache, private cache_shape {
 public:
  static_cache(const model_config& cfg, std::int64_t batch, std::int64_t capacity,
               at::Device device, at::ScalarType dtype);

  void append(int layer, const kv_append& kv) override;
  at::Tensor attend(int layer, const at::Tensor& q_rope, const at::Tensor& positions) override;
  std::int64_t length() const override;
  void reset() override;

  std::int64_t capacity() const { return capacity_; }
  // Sets every layer's held length (after a graph replay appended one token on the device).
  void set_length(std::int64_t n);

  bool graph_safe() const override { return true; }
  std::int64_t graph_capacity() const override { return capacity_; }
  void set_host_length(std::int64_t n) override { set_length(n); }

 private:
  std::int64_t capacity_;
  std::vector<at::Tensor> k_, v_;  // per layer [B, n_kv, capacity, d], K after RoPE
  std::vector<std::int64_t> len_;
  at::Tensor slots_;  // [capacity] int64: 0 .. capacity-1 (key positions)
};

}  // namespace kvcal
