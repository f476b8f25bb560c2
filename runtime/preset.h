// A kvcal preset: one safetensors file carrying a whole KV-compression recipe and every tensor it
// needs. Reader and checks here (no libtorch); the writer is presets/preset_writer.h.
//
// Layout (format "kvcal.preset", version 2, reads 1; docs/formats/preset.md):
//   safetensors file
//     __metadata__["kvcal.preset"]          JSON recipe (runtime/preset_recipe.h): format, version,
//                                           model fingerprint, adaptive mode, one entry per layer
//     __metadata__["kvcal.byte_accounting"] JSON, informational: the accounting at export time
//                                           (readers recompute it; never trusted)
//     tensors (F32, F16 or BF16), exactly those the recipe requires, d = head_dim:
//       layers.<l>.<k|v>.heads.<h>.pca.basis            [rank, d]     rows = principal axes
//       layers.<l>.<k|v>.heads.<h>.pca.mean             [d]
//       layers.<l>.<k|v>.heads.<h>.ae.encoder.weight    [latent, d]
//       layers.<l>.<k|v>.heads.<h>.ae.encoder.bias      [latent]
//       layers.<l>.<k|v>.heads.<h>.ae.decoder.weight    [d, latent]
//       layers.<l>.<k|v>.heads.<h>.ae.decoder.bias      [d]
//       ...ae.encoder.mlp.fc1.weight [hidden, d], .fc1.bias [hidden], .fc2.weight [latent, hidden]
//       ...ae.decoder.mlp.fc1.weight [hidden, latent], .fc1.bias [hidden], .fc2.weight [d, hidden]
//                                                       (MLP autoencoder, ae.hidden > 0; v2)
//       layers.<l>.policy.weight / .bias                [n_kv_heads, in_dim] / [n_kv_heads]
//                                                       (learned policy, mlp_hidden == 0)
//       layers.<l>.policy.fc1.weight / .bias            [mlp_hidden, in_dim] / [mlp_hidden]
//       layers.<l>.policy.fc2.weight / .bias            [n_kv_heads, mlp_hidden] / [n_kv_heads]
// Versioning: a reader accepts the versions from preset_format_min_version to its own and names
// both numbers otherwise; new fields get defaults and a version bump; enum values are only
// appended.
//
//   kvcal::preset_file p("kivi-2.safetensors");      // validates recipe and tensors
//   p.check_model(kvcal::read_model_config(dir + "/config.json"), dir + "/config.json");
//   const kvcal::tensor_view& b = p.tensors().at("layers.0.v.heads.1.pca.basis");
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/io/safetensors.h"
#include "runtime/preset_recipe.h"

namespace kvcal {

inline constexpr const char* preset_metadata_key = "kvcal.preset";
inline constexpr const char* preset_accounting_key = "kvcal.byte_accounting";

struct tensor_requirement {
  std::string name;
  std::vector<std::int64_t> shape;
  std::string what;  // "PCA basis", "AE encoder weight", "policy weight", ...
};

// Every tensor the recipe needs, in a stable order (layer, K then V, head).
std::vector<tensor_requirement> required_tensors(const preset_recipe& r);

// What calibration a recipe needs, for messages: e.g. {"PCA bases (fit-pca) for V of 28 layers"}.
struct calibration_needs {
  bool pca = false, ae = false, policy = false;
  std::string describe() const;  // "PCA bases (kvcal fit-pca), AE weights (kvcal train-ae)"
  bool any() const { return pca || ae || policy; }
};
calibration_needs needs_of(const preset_recipe& r);

// Checks `tensors` against the recipe: each required tensor present with its shape and a float
// dtype, nothing extra. Errors name `source` and the tensor.
void check_preset_tensors(const preset_recipe& r, const std::vector<tensor_view>& tensors,
                          const std::string& source);

// True when `path` is a safetensors file whose metadata holds a kvcal recipe.
bool is_preset_file(const std::string& path);

class preset_file {
 public:
  explicit preset_file(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const preset_recipe& recipe() const { return recipe_; }
  const safetensors_file& tensors() const { return file_; }
  // Bytes of all tensors: the preset's fixed cost (bases, weights), independent of context.
  std::size_t fixed_bytes() const;
  // Refuses a model whose fingerprint differs, naming the field.
  void check_model(const model_config& c, const std::string& config_source) const;

 private:
  safetensors_file file_;
  preset_recipe recipe_;
};

}  // namespace kvcal
