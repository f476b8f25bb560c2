// The recipe of a kvcal preset: what is done to the K and V of every layer (and KV head), which
// tokens are kept, and the model it was made for. Plain structs with defaults, plus the JSON form
// stored in the preset's `__metadata__` (docs/formats/preset.md describes every field).
//
// JSON (format "kvcal.preset", version 2; version 1 files, without the v2 fields ae.hidden
// and head_budgets, still read):
//   { "format": "kvcal.preset", "version": 2, "name": "kivi-2", "description": "...",
//     "model": { "model_type": "llama", "n_layers": 4, "n_kv_heads": 2, "head_dim": 64,
//                "rope": {...}, "config_sha256": "..." },
//     "adaptive": { "compress_after": 512, "keep_recent": 256 },        (optional)
//     "layers": [ { "k": {"quant": {"bits": 2, "group": 32, "axis": "per-channel",
//                                   "symmetric": false}},
//                   "v": {"pca": {"rank": 96, "latent_bits": 8}},       ("none" | {"none": {}})
//                        | {"ae": {"latent": 16, "latent_bits": 16, "hidden": 64}}
//                   "heads": [ {"k": ..., "v": ...}, ... ],              (optional per KV head)
//                   "policy": {"h2o": {"heavy": 0.8, "recent": 0.2}},   ("full" | {"full": {}})
//                   "budget": {"retain": 0.125} | {"tokens": 256},       (optional)
//                   "head_budgets": [{"retain": 0.2}, {"tokens": 40}],  (optional, v2, per KV head)
//                   "guard": 0.5, "residual": 128 }, ... ] }
// Versions: 1 = no ae.hidden (every AE linear); 2 adds ae.hidden (MLP autoencoders). Writers
// write the current version; readers take every version from the oldest to the current.
//
//   kvcal::preset_recipe r = kvcal::parse_recipe(json, "preset.safetensors");  // validates
//   std::string s = kvcal::recipe_to_json(r).dump();
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "runtime/model_config.h"

namespace kvcal {

inline constexpr const char* preset_format_name = "kvcal.preset";
inline constexpr int preset_format_version = 2;      // written
inline constexpr int preset_format_min_version = 1;  // oldest read (same fields, defaults)

// Values only ever appended.
enum class kv_method_kind { none, quant, pca, ae };
enum class quant_axis { per_channel, per_token };
enum class token_policy_kind { full, window, h2o, lru, cluster, learned };
enum class budget_kind { none, tokens, retain };
enum class policy_features { hidden, key };

const char* kv_method_name(kv_method_kind k);
const char* quant_axis_name(quant_axis a);
const char* token_policy_name(token_policy_kind k);
const char* policy_features_name(policy_features f);

struct quant_params {
  int bits = 4;                             // 2 | 3 | 4 | 8
  int group = 32;                           // elements sharing one scale (and zero)
  quant_axis axis = quant_axis::per_token;  // per-channel: groups run along tokens (KIVI K)
  bool symmetric = false;                   // symmetric: scale only; asymmetric: scale + zero
};

struct pca_params {
  int rank = 0;          // latent size; 0 only in templates (chosen at export from the PCA file)
  int latent_bits = 16;  // 16 (fp16) | 8 | 4 (per-token asymmetric, fp16 scale + zero)
};

// Autoencoder per (layer, K|V, KV head). hidden == 0: linear, z = W_e x + b_e, x' = W_d z + b_d;
// hidden > 0: that plus a GELU branch of width `hidden` on each side (runtime/ae_mlp.h,
// `kvcal train-ae --arch mlp`). Since format version 2.
struct ae_params {
  int latent = 0;
  int latent_bits = 16;  // 16 | 8 | 4, as for PCA
  int hidden = 0;        // MLP hidden width; 0 = linear
};

struct kv_method {
  kv_method_kind kind = kv_method_kind::none;
  quant_params quant;  // kind == quant
  pca_params pca;      // kind == pca
  ae_params ae;        // kind == ae
};

// Learned eviction scorer: one score per KV head from `in_dim` features per token; linear when
// mlp_hidden == 0, else Linear(in_dim, mlp_hidden) -> ReLU -> Linear(mlp_hidden, n_kv_heads).
struct learned_params {
  policy_features features = policy_features::hidden;  // KVzap: hidden state; or the key
  std::int64_t in_dim = 0;
  std::int64_t mlp_hidden = 0;
  std::optional<double> threshold;  // evict below this score; else the layer's budget decides
};

struct token_policy {
  token_policy_kind kind = token_policy_kind::full;
  std::int64_t sinks = 0;   // window: first tokens always kept (attention sinks)
  std::int64_t recent = 0;  // window: last tokens kept
  double heavy = 0.8;       // h2o: fractions of the layer's budget (sum to 1)
  double recent_fraction = 0.2;
  std::int64_t clusters = 0;  // cluster: centroids that absorb evicted tokens
  learned_params learned;
};

struct token_budget {
  budget_kind kind = budget_kind::none;
  std::int64_t tokens = 0;  // kind == tokens
  double retain = 1.0;      // kind == retain: fraction of the context kept
};

struct head_methods {  // per-KV-head override; unset = the layer's method
  std::optional<kv_method> k, v;
};

struct layer_recipe {
  kv_method k, v;
  std::vector<head_methods> heads;  // empty, or one entry per KV head
  token_policy policy;
  token_budget budget;
  // Empty, or one budget per KV head replacing `budget` for that head (evicting policies that
  // take a budget: h2o, lru, cluster, learned). Format version >= 2.
  std::vector<token_budget> head_budgets;
  double guard = 0.0;         // fraction of compressed-eligible retained tokens kept in fp16
  std::int64_t residual = 0;  // full-precision recent window (KIVI residual), tokens

  const kv_method& k_of(std::size_t head) const;
  const kv_method& v_of(std::size_t head) const;
  const token_budget& budget_of(std::size_t head) const;
};

struct adaptive_config {
  bool enabled = false;
  std::int64_t compress_after = 0;  // no compression while the context is at most this long
  std::int64_t keep_recent = 0;     // then the last keep_recent tokens stay fp16
};

struct model_fingerprint {
  std::string model_type;
  std::int64_t n_layers = 0, n_kv_heads = 0, head_dim = 0;
  rope_config rope;
  std::string config_sha256;
};

struct preset_recipe {
  std::string name;
  std::string description;
  model_fingerprint model;
  adaptive_config adaptive;
  std::vector<layer_recipe> layers;  // one per model layer
};

model_fingerprint fingerprint_of(const model_config& c);

struct recipe_parse_options {
  // Templates may leave a PCA rank / AE latent at 0: chosen at export from calibration files.
  bool allow_unset_rank = false;
};

// Parses and validates a recipe (format and version included). Errors read
// "<source>: <json path>: <what is wrong>", e.g. "p.safetensors: layers[3].k.quant.bits: 5 is
// not one of 2,3,4,8". A version outside [preset_format_min_version, preset_format_version] is
// refused naming both.
preset_recipe parse_recipe(const nlohmann::json& j, const std::string& source,
                           const recipe_parse_options& opts = {});
// The stored form (format + version included); parse_recipe(recipe_to_json(r)) == r.
nlohmann::json recipe_to_json(const preset_recipe& r);

// Throws "<source>: model fingerprint: <field> is X in the preset, Y in <config source>".
void check_fingerprint(const model_fingerprint& preset, const model_config& model,
                       const std::string& source, const std::string& config_source);

nlohmann::json rope_to_json(const rope_config& r);

// Field by field, through the stored form (which holds every field).
bool operator==(const preset_recipe& a, const preset_recipe& b);

}  // namespace kvcal
