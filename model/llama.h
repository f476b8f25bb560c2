// The Llama-family decoder (model_type llama, qwen2, mistral) in libtorch, matching transformers'
// LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM:
//   x = embed(ids)
//   per layer: h = rmsnorm(x)                     (fp32 math, cast back, times weight)
//              q, k, v = h W_qkv (+ bias)        -> RoPE (model/rope.h) on q and k
//              hook(hidden=h, q, q_rope, k, k_rope, v)
//              cache.append(k, k_rope, v); a = cache.attend(q_rope)
//              x += a W_o (+ bias);  x += down(silu(gate(rmsnorm(x))) * up(rmsnorm(x)))
//   logits = rmsnorm(x) W_lm_head   (tied to the embedding when tie_word_embeddings)
// The residual stream and every matmul run in the compute dtype (fp32 on CPU; bf16/fp16 on
// CUDA), as transformers does for a model loaded in that dtype.
//
//   auto m = kvcal::llama_model::load("/models/qwen2.5-7b", at::kCUDA, at::kBFloat16);
//   kvcal::full_cache cache(m.config(), 1, m.device(), m.dtype());
//   at::Tensor logits = m.forward(ids, cache);              // ids [1, T] int64: prefill
//   at::Tensor next = m.forward(tok, cache, {kvcal::logits_mode::last});   // one decode step
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "model/kv_cache.h"
#include "model/rope.h"
#include "model/weights.h"
#include "runtime/model_config.h"

namespace kvcal {

enum class logits_mode { all, last, none };

struct forward_options {
  logits_mode logits = logits_mode::all;
  layer_hook* maybe_hook = nullptr;  // called per layer with layer_activations (kv_cache.h)
  // [T] int64 on the model's device: positions of the new tokens, instead of
  // cache.length() .. cache.length()+T-1 (a CUDA-graph step reads them from a device buffer).
  at::Tensor maybe_positions = at::Tensor();
};

class llama_model {
 public:
  // Reads dir/config.json (read_model_config) and the weights; dtype fp32 on CPU, bf16/fp16 on
  // CUDA.
  static llama_model load(const std::string& dir, at::Device device, at::ScalarType dtype);
  // From an already read config (tests, tools that edit the config).
  static llama_model load(const std::string& dir, const model_config& cfg, at::Device device,
                          at::ScalarType dtype);

  const model_config& config() const { return *cfg_; }
  at::Device device() const { return device_; }
  at::ScalarType dtype() const { return dtype_; }
  const model_weights& weights() const { return *w_; }
  const std::string& dir() const { return dir_; }

  // ids: [B, T] int64. Positions start at cache.length(). Returns logits float32 [B, T, vocab]
  // (all), [B, 1, vocab] (last) or an undefined tensor (none). Runs under c10::InferenceMode:
  // tensors it creates (logits, hook activations, cache buffers allocated meanwhile) are
  // inference tensors: read them freely, copy them before modifying them in place elsewhere.
  at::Tensor forward(const at::Tensor& ids, kv_cache& cache, const forward_options& opt = {}) const;

 private:
  llama_model(std::string dir, std::shared_ptr<const model_config> cfg,
              std::shared_ptr<const model_weights> w, at::Device device, at::ScalarType dtype);

  std::string dir_;
  std::shared_ptr<const model_config> cfg_;
  std::shared_ptr<const model_weights> w_;
  std::shared_ptr<const rope> rope_;
  at::Device device_;
  at::ScalarType dtype_;
};

// RMSNorm as LlamaRMSNorm: x * rsqrt(mean(x^2) + eps) in fp32, cast to x's dtype, times weight.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace kvcal
