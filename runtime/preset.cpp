#include "runtime/preset.h"

#include <map>
#include <nlohmann/json.hpp>

#include "kernels/common/error.h"

namespace kvcal {

namespace {

std::string shape_str(const std::vector<std::int64_t>& s) {
  std::string o = "[";
  for (std::size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

void method_tensors(const kv_method& m, const std::string& prefix, std::int64_t d,
                    std::vector<tensor_requirement>& out) {
  if (m.kind == kv_method_kind::pca) {
    out.push_back({prefix + ".pca.basis", {m.pca.rank, d}, "PCA basis"});
    out.push_back({prefix + ".pca.mean", {d}, "PCA mean"});
  } else if (m.kind == kv_method_kind::ae) {
    const std::int64_t z = m.ae.latent;
    out.push_back({prefix + ".ae.encoder.weight", {z, d}, "AE encoder weight"});
    out.push_back({prefix + ".ae.encoder.bias", {z}, "AE encoder bias"});
    out.push_back({prefix + ".ae.decoder.weight", {d, z}, "AE decoder weight"});
    out.push_back({prefix + ".ae.decoder.bias", {d}, "AE decoder bias"});
    if (m.ae.hidden > 0) {  // MLP autoencoder: a GELU branch on each side (runtime/ae_mlp.h)
      const std::int64_t h = m.ae.hidden;
      out.push_back({prefix + ".ae.encoder.mlp.fc1.weight", {h, d}, "AE encoder MLP weight"});
      out.push_back({prefix + ".ae.encoder.mlp.fc1.bias", {h}, "AE encoder MLP bias"});
      out.push_back({prefix + ".ae.encoder.mlp.fc2.weight", {z, h}, "AE encoder MLP weight"});
      out.push_back({prefix + ".ae.decoder.mlp.fc1.weight", {h, z}, "AE decoder MLP weight"});
      out.push_back({prefix + ".ae.decoder.mlp.fc1.bias", {h}, "AE decoder MLP bias"});
      out.push_back({prefix + ".ae.decoder.mlp.fc2.weight", {d, h}, "AE decoder MLP weight"});
    }
  }
}

}  // namespace

std::vector<tensor_requirement> required_tensors(const preset_recipe& r) {
  std::vector<tensor_requirement> out;
  const std::int64_t d = r.model.head_dim, H = r.model.n_kv_heads;
  for (std::size_t l = 0; l < r.layers.size(); ++l) {
    const layer_recipe& lr = r.layers[l];
    const std::string lp = "layers." + std::to_string(l);
    for (std::int64_t h = 0; h < H; ++h)
      method_tensors(lr.k_of(static_cast<std::size_t>(h)), lp + ".k.heads." + std::to_string(h), d,
                     out);
    for (std::int64_t h = 0; h < H; ++h)
      method_tensors(lr.v_of(static_cast<std::size_t>(h)), lp + ".v.heads." + std::to_string(h), d,
                     out);
    if (lr.policy.kind == token_policy_kind::learned) {
      const auto& p = lr.policy.learned;
      if (p.mlp_hidden == 0) {
        out.push_back({lp + ".policy.weight", {H, p.in_dim}, "policy weight"});
        out.push_back({lp + ".policy.bias", {H}, "policy bias"});
      } else {
        out.push_back({lp + ".policy.fc1.weight", {p.mlp_hidden, p.in_dim}, "policy weight"});
        out.push_back({lp + ".policy.fc1.bias", {p.mlp_hidden}, "policy bias"});
        out.push_back({lp + ".policy.fc2.weight", {H, p.mlp_hidden}, "policy weight"});
        out.push_back({lp + ".policy.fc2.bias", {H}, "policy bias"});
      }
    }
  }
  return out;
}

std::string calibration_needs::describe() const {
  std::string s;
  auto add = [&](const char* what) { s += (s.empty() ? "" : ", ") + std::string(what); };
  if (pca) add("PCA bases (kvcal fit-pca, --pca)");
  if (ae) add("autoencoder weights (kvcal train-ae, --ae)");
  if (policy) add("eviction policy weights (kvcal train-policy, --policy)");
  return s;
}

calibration_needs needs_of(const preset_recipe& r) {
  calibration_needs n;
  for (const auto& t : required_tensors(r)) {
    n.pca = n.pca || t.what.rfind("PCA", 0) == 0;
    n.ae = n.ae || t.what.rfind("AE", 0) == 0;
    n.policy = n.policy || t.what.rfind("policy", 0) == 0;
  }
  return n;
}

void check_preset_tensors(const preset_recipe& r, const std::vector<tensor_view>& tensors,
                          const std::string& source) {
  std::map<std::string, const tensor_view*> by_name;
  for (const auto& t : tensors) by_name[t.name] = &t;
  for (const auto& req : required_tensors(r)) {
    auto it = by_name.find(req.name);
    KVCAL_CHECK(it != by_name.end(), source, ": tensor '", req.name, "' (", req.what, ", shape ",
                shape_str(req.shape), ") is missing; the recipe needs it");
    const tensor_view& t = *it->second;
    KVCAL_CHECK(t.shape == req.shape, source, ": tensor '", req.name, "': shape ",
                shape_str(t.shape), ", the recipe needs ", shape_str(req.shape));
    KVCAL_CHECK(t.dtype == st_dtype::F32 || t.dtype == st_dtype::F16 || t.dtype == st_dtype::BF16,
                source, ": tensor '", req.name, "': dtype ", dtype_name(t.dtype),
                " (F32, F16 or BF16 expected)");
    by_name.erase(it);
  }
  KVCAL_CHECK(by_name.empty(), source, ": tensor '", by_name.empty() ? "" : by_name.begin()->first,
              "' is not used by the recipe");
}

bool is_preset_file(const std::string& path) {
  try {
    safetensors_file f(path);
    return f.metadata().count(preset_metadata_key) != 0;
  } catch (const error&) {
    return false;
  }
}

preset_file::preset_file(const std::string& path) : file_(path) {
  auto it = file_.metadata().find(preset_metadata_key);
  KVCAL_CHECK(it != file_.metadata().end(), path, ": not a kvcal preset (no __metadata__ key '",
              preset_metadata_key, "')");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception& e) {
    KVCAL_FAIL(path, ": __metadata__.", preset_metadata_key, ": malformed JSON: ", e.what());
  }
  recipe_ = parse_recipe(j, path);
  check_preset_tensors(recipe_, file_.tensors(), path);
}

std::size_t preset_file::fixed_bytes() const {
  std::size_t n = 0;
  for (const auto& t : file_.tensors()) n += t.nbytes;
  return n;
}

void preset_file::check_model(const model_config& c, const std::string& config_source) const {
  check_fingerprint(recipe_.model, c, path(), config_source);
}

}  // namespace kvcal
