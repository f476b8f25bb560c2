// RoPE frequencies of a model's rope_config, computed as transformers' ROPE_INIT_FUNCTIONS do
// (modeling_rope_utils.py): default, linear, dynamic (NTK), llama3 and yarn. The rotation itself is
// kernels/cpu/rope.h. The compressed cache stores keys before RoPE and rotates reconstructed keys
// at their original positions with these frequencies.
//
//   kvcal::rope_frequencies f = kvcal::rope_inv_freq(cfg.rope, 128, cfg.max_position_embeddings);
//   kvcal::rope_cos_sin(pos, f.inv_freq.data(), 128, f.attention_scaling, cos, sin);
//
// Dynamic NTK depends on the sequence length: pass seq_len (max position + 1); below
// max_position_embeddings it equals default RoPE. transformers recomputes the frequencies when a
// forward's positions pass the original length and keeps the keys it cached after RoPE with the
// old ones; a pre-RoPE cache rotates every key with the current frequencies (documented
// difference).
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/model_config.h"

namespace kvcal {

struct rope_frequencies {
  std::vector<float> inv_freq;     // [head_dim / 2]
  float attention_scaling = 1.0f;  // multiplies cos and sin (yarn)
};

// max_position_embeddings: the model's (dynamic uses it, and yarn / llama3 when the config has
// no original_max_position_embeddings). seq_len: dynamic only (0 = max_position_embeddings).
rope_frequencies rope_inv_freq(const rope_config& r, int head_dim,
                               std::int64_t max_position_embeddings, std::int64_t seq_len = 0);
// Same into caller memory (inv_freq: [head_dim / 2]); allocates nothing. Returns the scaling.
float rope_inv_freq(const rope_config& r, int head_dim, std::int64_t max_position_embeddings,
                    std::int64_t seq_len, float* inv_freq);

}  // namespace kvcal
