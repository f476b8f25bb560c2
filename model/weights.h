// Weights of a Llama-family checkpoint (llama, qwen2, mistral) read from a Hugging Face folder:
// `model.safetensors`, or the shards listed by `model.safetensors.index.json`. Files are
// memory-mapped (runtime/io/safetensors.h) and each tensor is copied once, straight from the
// mapping, to the chosen device and compute dtype (BF16 / F16 / F32 on disk).
//
// Every expected tensor is checked for presence and shape against config.json; errors name the
// file and the tensor. Q/K/V projections are concatenated into one [q+k+v, hidden] matrix and
// gate/up into one [2 x intermediate, hidden] matrix (one GEMM each).
//
//   kvcal::model_config cfg = kvcal::read_model_config(dir + "/config.json");
//   kvcal::model_weights w = kvcal::load_weights(dir, cfg, at::kCUDA, at::kBFloat16);
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "runtime/model_config.h"

namespace kvcal {

struct layer_weights {
  at::Tensor input_norm;  // [hidden]
  at::Tensor post_norm;   // [hidden]  (post_attention_layernorm)
  at::Tensor w_qkv;       // [(n_heads + 2 n_kv) d, hidden]
  at::Tensor b_qkv;       // [(n_heads + 2 n_kv) d] or undefined
  at::Tensor w_o;         // [hidden, n_heads d]
  at::Tensor b_o;         // [hidden] or undefined (llama attention_bias)
  at::Tensor w_gate_up;   // [2 intermediate, hidden]
  at::Tensor b_gate_up;   // [2 intermediate] or undefined (mlp_bias)
  at::Tensor w_down;      // [hidden, intermediate]
  at::Tensor b_down;      // [hidden] or undefined (mlp_bias)
};

struct model_weights {
  at::Tensor embed;  // [vocab, hidden]
  std::vector<layer_weights> layers;
  at::Tensor final_norm;   // [hidden]
  at::Tensor lm_head;      // [vocab, hidden]; the embedding itself when tie_word_embeddings
  std::int64_t bytes = 0;  // device bytes held (tied lm_head counted once)
};

// Reads the weights of the checkpoint folder `dir` described by `cfg`.
model_weights load_weights(const std::string& dir, const model_config& cfg, at::Device device,
                           at::ScalarType dtype);

}  // namespace kvcal
