// A kv_cache that measures how far a compressed cache's attention output is from exact attention
// over the same inputs, per layer, while it runs.
//
// Every append goes to both the cache under test and a full-precision shadow (full_cache); every
// attend asks both and returns the tested cache's output, so the model follows the compressed
// trajectory exactly as without the probe. Per layer it accumulates
//   sum ||o_cache - o_exact||^2 and sum ||o_exact||^2   over every query of every attend call
// (prefill and decode), and relative_error(layer) = sqrt(first / second). The error is local: both
// caches see the same keys, values and queries (those of the compressed run), so it isolates what
// the cache's storage (quantization, low rank, eviction) does to one attention step.
//
//   kvcal::runtime_cache rc(cfg, "kivi-2.safetensors", 1);
//   kvcal::attention_error_probe probe(rc, cfg, device, dtype, ctx);
//   model.forward(ids, probe);  probe.relative_errors();   // [n_layers]
#pragma once

#include <cstdint>
#include <vector>

#include "model/full_cache.h"
#include "model/kv_cache.h"

namespace kvcal {

class attention_error_probe : public kv_cache {
 public:
  attention_error_probe(kv_cache& inner, const model_config& cfg, at::Device device,
                        at::ScalarType dtype, std::int64_t capacity_hint = 0);

  void append(int layer, const kv_append& kv) override;
  at::Tensor attend(int layer, const at::Tensor& q_rope, const at::Tensor& positions) override;
  std::int64_t length() const override { return inner_.length(); }
  // Resets both caches; the accumulated errors are kept (they span every window of a run).
  void reset() override;

  // sqrt(sum ||o - o_exact||^2 / sum ||o_exact||^2) per layer; 0 for a layer never attended.
  std::vector<double> relative_errors() const;

 private:
  kv_cache& inner_;
  full_cache shadow_;
  std::vector<double> diff2_, ref2_;  // [n_layers]
};

}  // namespace kvcal
