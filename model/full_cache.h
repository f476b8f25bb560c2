// The plain full-precision KV cache: every token's K (after RoPE) and V, per layer, in
// preallocated buffers that grow by doubling. Attention is causal GQA over the held tokens,
// honouring a sliding window (Mistral; transformers' convention: a token at position p sees the
// keys at positions p - window < j <= p, i.e. the last `window` positions including itself).
//
// Attention paths (same math; the fused one where the libtorch version has it):
//   CPU, or libtorch < 2.0   explicit fp32-accumulating math: softmax(q k^T / sqrt(d) + mask) v,
//                            softmax in fp32 as transformers' eager attention
//   CUDA with libtorch >= 2  at::scaled_dot_product_attention: is_causal for a prefill that starts
//                            the sequence, no mask for a one-token step, else an explicit mask;
//                            the cuDNN SDPA backend is switched off process-wide (it re-plans for
//                            every new key length: ~50 ms per decode step, full_cache.cpp)
// GQA without copies: the n_rep query heads that share a KV head are folded into the query
// length ([B, n_kv, n_rep T, d]), so one KV head serves them all.
//
//   kvcal::full_cache cache(model.config(), /*batch=*/1, model.device(), model.dtype(), 4096);
//   model.forward(ids, cache);   // appends to every layer, then attends
// The new tokens of a forward must be at positions length() .. length()+T-1 (what
// llama_model::forward passes); rows of the batch share positions.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "model/cache_shape.h"
#include "model/kv_cache.h"
#include "runtime/model_config.h"

namespace kvcal {

class full_cache : public kv_cache, private cache_shape {
 public:
  // capacity_hint: tokens to preallocate per layer (0 = allocate on first append).
  full_cache(const model_config& cfg, std::int64_t batch, at::Device device, at::ScalarType dtype,
             std::int64_t capacity_hint = 0);

  void append(int layer, const kv_append& kv) override;
  at::Tensor attend(int layer, const at::Tensor& q_rope, const at::Tensor& positions) override;
  // Tokens held by the last layer (every layer holds as many once a forward is done).
  std::int64_t length() const override;
  void reset() override;

  // [B, n_kv, length, d] views of what `layer` holds (K after RoPE).
  at::Tensor keys(int layer) const;
  at::Tensor values(int layer) const;
  std::int64_t capacity() const { return capacity_; }
  // Device bytes of the K/V buffers (allocated capacity, all layers).
  std::int64_t bytes() const;

 private:
  void reserve(std::int64_t tokens);

  at::Device device_;
  at::ScalarType dtype_;
  std::int64_t capacity_ = 0;
  std::vector<at::Tensor> k_, v_;  // per layer [B, n_kv, capacity, d]
  std::vector<std::int64_t> len_;  // per layer
};

// Causal GQA attention of q ([B, n_heads, T, d], queries at positions q_start .. q_start+T-1)
// over k, v ([B, n_kv, S, d], keys at positions 0 .. S-1), with an optional sliding window
// (0 = none). Returns [B, n_heads, T, d] in q's dtype. Exposed for reference paths and tests.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            std::int64_t q_start, std::int64_t window);

}  // namespace kvcal
