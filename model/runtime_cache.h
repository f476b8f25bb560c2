// The model's KV-cache interface (model/kv_cache.h) backed by the compressed runtime cache
// (runtime/compressed_cache.h): the forward appends pre-RoPE keys and values, the runtime
// compresses them as the preset says and attends with RoPE re-applied at the keys' positions.
//
// Tensors cross as fp32 on the CPU (the runtime is the CPU reference): inputs are converted,
// the output comes back in the query's dtype and device. Batch rows share positions and get one
// compressed cache each. The model's sliding window (Mistral) is applied as a mask.
//
//   auto m = kvcal::llama_model::load(dir, at::kCPU, at::kFloat);
//   kvcal::runtime_cache cache(m.config(), "kivi-2.safetensors", /*batch=*/1);
//   m.forward(prefix, cache);               // prefill through the compressed cache
//   m.forward(next, cache);                 // decode: compressed tokens are attended
//   cache.stats().bytes_held;               // summed over batch rows
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/kv_cache.h"
#include "runtime/compressed_cache.h"
#include "runtime/model_config.h"
#include "runtime/preset.h"

namespace kvcal {

class runtime_cache : public kv_cache {
 public:
  // Reads the preset and refuses it if its fingerprint differs from `cfg`.
  runtime_cache(const model_config& cfg, const std::string& preset_path, std::int64_t batch,
                const cache_options& opt = {});
  // From a recipe and its tensors in memory (tests, tools); the fingerprint is checked as well.
  runtime_cache(const model_config& cfg, const preset_recipe& r,
                const std::vector<tensor_view>& tensors, std::int64_t batch,
                const cache_options& opt = {}, const std::string& source = "preset");

  void append(int layer, const kv_append& kv) override;
  at::Tensor attend(int layer, const at::Tensor& q_rope, const at::Tensor& positions) override;
  // Tokens seen by the last layer (the next position; under eviction more than it holds).
  std::int64_t length() const override;
  void reset() override;

  // Pages and scratch for max_context tokens fed max_step at a time (every row).
  void reserve(std::int64_t max_context, std::int64_t max_step);
  std::int64_t batch() const { return static_cast<std::int64_t>(rows_.size()); }
  compressed_cache& row(std::int64_t b) { return *rows_.at(static_cast<std::size_t>(b)); }
  // Summed over rows (tokens: row 0's).
  cache_stats stats() const;

 private:
  void build(const model_config& cfg, const preset_recipe& r,
             const std::vector<tensor_view>& tensors, std::int64_t batch, const cache_options& opt,
             const std::string& source);

  std::vector<std::unique_ptr<compressed_cache>> rows_;
  int n_heads_ = 0, n_kv_ = 0, d_ = 0, n_layers_ = 0;
};

}  // namespace kvcal
