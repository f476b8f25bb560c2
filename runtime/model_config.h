// The architecture facts kvcal needs from a Hugging Face `config.json` (Llama, Qwen2, Mistral),
// parsed without libtorch so that the runtime and the preset reader can check a model too.
//
// Accepted spellings: both the legacy form (`rope_theta` + `rope_scaling`, `torch_dtype`) and the
// transformers v5 form (`rope_parameters` holding rope_theta and the scaling, `dtype`).
// Anything that changes the math and is not supported is refused with an error naming the field.
//
//   kvcal::model_config c = kvcal::read_model_config("models/tiny/config.json");
//   c.head_dim  // from `head_dim` when given, else hidden_size / num_attention_heads
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace kvcal {

enum class rope_type { none, linear, dynamic, llama3, yarn };
const char* rope_type_name(rope_type t);

struct rope_config {
  double theta = 10000.0;
  rope_type type = rope_type::none;  // scaling type; `none` = plain RoPE
  double factor = 1.0;               // linear / dynamic / llama3 / yarn
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  std::int64_t original_max_position_embeddings = 0;  // llama3, yarn (0 = not given)
  // yarn
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double attention_factor = 0.0;  // 0 = derived (0.1 ln(factor) + 1)
  double mscale = 0.0, mscale_all_dim = 0.0;
  bool truncate = true;
  double partial_rotary_factor = 1.0;  // only 1.0 supported
};

struct model_config {
  std::string model_type;  // "llama" | "qwen2" | "mistral"
  std::int64_t vocab_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t num_hidden_layers = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t num_key_value_heads = 0;
  std::int64_t head_dim = 0;
  double rms_norm_eps = 1e-6;
  std::int64_t max_position_embeddings = 0;
  bool attention_bias = false;  // q/k/v (and o for llama) biases; Qwen2: q/k/v always
  bool mlp_bias = false;
  bool tie_word_embeddings = false;
  std::int64_t sliding_window = 0;  // 0 = none (Mistral; Qwen2 only with use_sliding_window)
  std::string torch_dtype;          // as written ("bfloat16", ...), informational
  std::int64_t bos_token_id = -1, eos_token_id = -1;
  rope_config rope;
  std::string config_sha256;  // of the config.json bytes: the model fingerprint's hash

  std::int64_t n_rep() const { return num_attention_heads / num_key_value_heads; }
};

// Reads and validates `path` (a config.json). Errors name the file and the field.
model_config read_model_config(const std::string& path);
// Same from parsed JSON; `source` names it in errors.
model_config parse_model_config(const nlohmann::json& j, const std::string& source);

}  // namespace kvcal
