#include "runtime/model_config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kernels/common/error.h"
#include "runtime/io/sha256.h"

namespace kvcal {
namespace {

using json = nlohmann::json;

std::int64_t get_int(const json& j, const char* key, const std::string& src, bool required,
                     std::int64_t fallback = 0) {
  if (!j.contains(key) || j[key].is_null()) {
    KVCAL_CHECK(!required, src, ": missing required field '", key, "'");
    return fallback;
  }
  KVCAL_CHECK(j[key].is_number_integer(), src, ": field '", key, "' must be an integer");
  return j[key].get<std::int64_t>();
}

double get_num(const json& j, const char* key, const std::string& src, double fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  KVCAL_CHECK(j[key].is_number(), src, ": field '", key, "' must be a number");
  return j[key].get<double>();
}

bool get_bool(const json& j, const char* key, const std::string& src, bool fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  KVCAL_CHECK(j[key].is_boolean(), src, ": field '", key, "' must be true or false");
  return j[key].get<bool>();
}

// eos_token_id may be a list; the first entry is kept.
std::int64_t get_token_id(const json& j, const char* key) {
  if (!j.contains(key)) return -1;
  const json& v = j[key];
  if (v.is_number_integer()) return v.get<std::int64_t>();
  if (v.is_array() && !v.empty() && v[0].is_number_integer()) return v[0].get<std::int64_t>();
  return -1;
}

void parse_rope(const json& j, const std::string& src, rope_config& r) {
  // v5: rope_parameters {rope_type, rope_theta, ...}; legacy: rope_theta + rope_scaling.
  const json* scaling = nullptr;
  std::string field = "rope_scaling";
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    scaling = &j["rope_parameters"];
    field = "rope_parameters";
    r.theta = get_num(*scaling, "rope_theta", src, get_num(j, "rope_theta", src, 10000.0));
  } else {
    r.theta = get_num(j, "rope_theta", src, 10000.0);
    if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) scaling = &j["rope_scaling"];
    else
      KVCAL_CHECK(!j.contains("rope_scaling") || j["rope_scaling"].is_null(), src,
                  ": field 'rope_scaling' must be an object or null");
  }
  KVCAL_CHECK(r.theta > 0, src, ": rope_theta must be positive");
  if (!scaling) return;
  const json& s = *scaling;
  std::string type = "default";
  if (s.contains("rope_type") && s["rope_type"].is_string()) type = s["rope_type"].get<std::string>();
  else if (s.contains("type") && s["type"].is_string()) type = s["type"].get<std::string>();
  if (type == "default") r.type = rope_type::none;
  else if (type == "linear") r.type = rope_type::linear;
  else if (type == "dynamic") r.type = rope_type::dynamic;
  else if (type == "llama3") r.type = rope_type::llama3;
  else if (type == "yarn") r.type = rope_type::yarn;
  else KVCAL_FAIL(src, ": ", field, ".rope_type '", type,
                  "' is not supported (supported: default, linear, dynamic, llama3, yarn)");
  r.factor = get_num(s, "factor", src, 1.0);
  r.partial_rotary_factor = get_num(s, "partial_rotary_factor",
                                    src, get_num(j, "partial_rotary_factor", src, 1.0));
  KVCAL_CHECK(r.partial_rotary_factor == 1.0, src,
              ": partial_rotary_factor != 1 is not supported");
  if (r.type != rope_type::none)
    KVCAL_CHECK(r.factor > 0, src, ": ", field, ".factor must be positive");
  r.original_max_position_embeddings = get_int(s, "original_max_position_embeddings", src, false, 0);
  if (r.type == rope_type::llama3) {
    r.low_freq_factor = get_num(s, "low_freq_factor", src, 1.0);
    r.high_freq_factor = get_num(s, "high_freq_factor", src, 4.0);
    KVCAL_CHECK(r.original_max_position_embeddings > 0, src, ": ", field,
                ".original_max_position_embeddings is required for llama3 RoPE");
    KVCAL_CHECK(r.high_freq_factor != r.low_freq_factor, src, ": ", field,
                ": high_freq_factor must differ from low_freq_factor");
  }
  if (r.type == rope_type::yarn) {
    r.beta_fast = get_num(s, "beta_fast", src, 32.0);
    r.beta_slow = get_num(s, "beta_slow", src, 1.0);
    r.attention_factor = get_num(s, "attention_factor", src, 0.0);
    r.mscale = get_num(s, "mscale", src, 0.0);
    r.mscale_all_dim = get_num(s, "mscale_all_dim", src, 0.0);
    r.truncate = get_bool(s, "truncate", src, true);
  }
}

}  // namespace

const char* rope_type_name(rope_type t) {
  switch (t) {
    case rope_type::none: return "default";
    case rope_type::linear: return "linear";
    case rope_type::dynamic: return "dynamic";
    case rope_type::llama3: return "llama3";
    case rope_type::yarn: return "yarn";
  }
  return "?";
}

model_config parse_model_config(const json& j, const std::string& src) {
  KVCAL_CHECK(j.is_object(), src, ": not a JSON object");
  model_config c;
  KVCAL_CHECK(j.contains("model_type") && j["model_type"].is_string(), src,
              ": missing field 'model_type'");
  c.model_type = j["model_type"].get<std::string>();
  KVCAL_CHECK(c.model_type == "llama" || c.model_type == "qwen2" || c.model_type == "mistral", src,
              ": model_type '", c.model_type, "' is not supported (supported: llama, qwen2, mistral)");
  c.vocab_size = get_int(j, "vocab_size", src, true);
  c.hidden_size = get_int(j, "hidden_size", src, true);
  c.intermediate_size = get_int(j, "intermediate_size", src, true);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", src, true);
  c.num_attention_heads = get_int(j, "num_attention_heads", src, true);
  c.num_key_value_heads = get_int(j, "num_key_value_heads", src, false, c.num_attention_heads);
  KVCAL_CHECK(c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0 &&
                  c.num_hidden_layers > 0 && c.num_attention_heads > 0 && c.num_key_value_heads > 0,
              src, ": vocab_size, hidden_size, intermediate_size, num_hidden_layers, "
                   "num_attention_heads and num_key_value_heads must be positive");
  KVCAL_CHECK(c.num_attention_heads % c.num_key_value_heads == 0, src, ": num_attention_heads (",
              c.num_attention_heads, ") is not a multiple of num_key_value_heads (",
              c.num_key_value_heads, ")");
  if (j.contains("head_dim") && !j["head_dim"].is_null()) {
    c.head_dim = get_int(j, "head_dim", src, true);
  } else {
    KVCAL_CHECK(c.hidden_size % c.num_attention_heads == 0, src, ": hidden_size (", c.hidden_size,
                ") is not a multiple of num_attention_heads and no head_dim is given");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  KVCAL_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0, src, ": head_dim ", c.head_dim,
              " must be positive and even (RoPE rotates pairs)");
  c.rms_norm_eps = get_num(j, "rms_norm_eps", src, 1e-6);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", src, false, 2048);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", src, false);
  c.mlp_bias = get_bool(j, "mlp_bias", src, false);
  // Qwen2 always has q/k/v biases (and none on o_proj); Llama/Mistral follow attention_bias.
  c.attention_bias = c.model_type == "qwen2" ? true : get_bool(j, "attention_bias", src, false);
  if (j.contains("hidden_act") && j["hidden_act"].is_string()) {
    std::string act = j["hidden_act"].get<std::string>();
    KVCAL_CHECK(act == "silu" || act == "swish", src, ": hidden_act '", act,
                "' is not supported (SwiGLU with silu only)");
  }
  if (c.model_type == "mistral") {
    c.sliding_window = get_int(j, "sliding_window", src, false, 0);
  } else if (c.model_type == "qwen2" && get_bool(j, "use_sliding_window", src, false)) {
    KVCAL_FAIL(src, ": use_sliding_window (Qwen2 per-layer sliding window) is not supported");
  }
  KVCAL_CHECK(c.sliding_window >= 0, src, ": sliding_window must be >= 0");
  if (j.contains("dtype") && j["dtype"].is_string()) c.torch_dtype = j["dtype"].get<std::string>();
  else if (j.contains("torch_dtype") && j["torch_dtype"].is_string())
    c.torch_dtype = j["torch_dtype"].get<std::string>();
  c.bos_token_id = get_token_id(j, "bos_token_id");
  c.eos_token_id = get_token_id(j, "eos_token_id");
  parse_rope(j, src, c.rope);
  return c;
}

model_config read_model_config(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  KVCAL_CHECK(f.good(), path, ": cannot open model config");
  std::stringstream ss;
  ss << f.rdbuf();
  std::string text = ss.str();
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    KVCAL_FAIL(path, ": not valid JSON: ", e.what());
  }
  model_config c = parse_model_config(j, path);
  c.config_sha256 = sha256_hex(text);
  return c;
}

}  // namespace kvcal
