#include "presets/preset_trained.h"

#include <nlohmann/json.hpp>

#include "kernels/common/error.h"

namespace kvcal {

namespace {

// The metadata JSON of a train-ae / train-policy file, format and version checked, fingerprint
// compared with the model's config.
nlohmann::json read_meta(const safetensors_file& f, const char* key, const char* format,
                         int version, const model_config& cfg, const std::string& config_path) {
  const std::string& path = f.path();
  auto it = f.metadata().find(key);
  KVCAL_CHECK(it != f.metadata().end(), path, ": not a ", format, " file (no __metadata__ key '",
              key, "')");
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception& e) {
    KVCAL_FAIL(path, ": __metadata__.", key, ": malformed JSON: ", e.what());
  }
  KVCAL_CHECK(m.value("format", std::string()) == format, path, ": format '",
              m.value("format", std::string()), "', expected '", format, "'");
  const int v = m.value("version", 0);
  KVCAL_CHECK(v == version, path, ": ", format, " version ", v, ", this build reads version ",
              version);
  const model_fingerprint want = fingerprint_of(cfg);
  const nlohmann::json& fp = m.at("model");
  auto field = [&](const char* name, const nlohmann::json& mine) {
    if (!fp.contains(name)) return;
    KVCAL_CHECK(fp[name] == mine, path, ": model fingerprint: ", name, " is ", fp[name].dump(),
                " in the trained file, ", mine.dump(), " in ", config_path);
  };
  field("model_type", want.model_type);
  field("n_layers", want.n_layers);
  field("n_kv_heads", want.n_kv_heads);
  field("head_dim", want.head_dim);
  field("config_sha256", want.config_sha256);
  return m;
}

std::string shape_str(const std::vector<std::int64_t>& s) {
  std::string o = "[";
  for (std::size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

const tensor_view& take(const safetensors_file& f, const std::string& name,
                        const std::vector<std::int64_t>& shape, preset_trained_tensors& out) {
  const tensor_view* t = f.find(name);
  KVCAL_CHECK(t != nullptr, f.path(), ": no tensor '", name, "' (was this layer / head trained?)");
  KVCAL_CHECK(t->shape == shape, f.path(), ": tensor '", name, "' has shape ", shape_str(t->shape),
              ", expected ", shape_str(shape));
  std::vector<float>& v = out.storage.emplace_back(to_float(*t));
  out.tensors.push_back({name, st_dtype::F32, shape, v.data()});
  out.bytes += static_cast<double>(v.size() * 4);
  return *t;
}

}  // namespace

preset_trained_tensors apply_ae_file(preset_recipe& r, const std::string& ae_path,
                                     const model_config& cfg, const std::string& config_path) {
  const safetensors_file f(ae_path);
  const nlohmann::json m = read_meta(f, "kvcal.ae", "kvcal.ae", 1, cfg, config_path);
  const std::string arch = m.value("arch", std::string());
  KVCAL_CHECK(arch == "linear" || arch == "mlp", ae_path, ": arch '", arch,
              "' is not linear or mlp");
  const int latent = m.at("latent").get<int>();
  const int hidden = arch == "mlp" ? m.value("hidden", 0) : 0;
  KVCAL_CHECK(arch == "linear" || hidden > 0, ae_path, ": arch mlp with hidden width ", hidden);
  const std::int64_t d = r.model.head_dim, H = r.model.n_kv_heads;
  preset_trained_tensors out;
  bool any = false;
  for (std::size_t l = 0; l < r.layers.size(); ++l) {
    layer_recipe& lr = r.layers[l];
    for (const char* stream : {"k", "v"}) {
      const bool is_k = stream[0] == 'k';
      auto fix = [&](kv_method& km, const std::string& where) {
        if (km.kind != kv_method_kind::ae) return;
        KVCAL_CHECK(km.ae.latent == 0 || km.ae.latent == latent, ae_path, ": ", where,
                    " needs latent ", km.ae.latent, ", the autoencoders have latent ", latent);
        KVCAL_CHECK(km.ae.hidden == 0 || km.ae.hidden == hidden, ae_path, ": ", where,
                    " needs an MLP autoencoder of hidden width ", km.ae.hidden, ", the file's are ",
                    arch, hidden > 0 ? " of width " + std::to_string(hidden) : std::string());
        km.ae.latent = latent;
        km.ae.hidden = hidden;  // the architecture is the file's
      };
      const std::string where = "layer " + std::to_string(l) + " " + (is_k ? "K" : "V");
      fix(is_k ? lr.k : lr.v, where);
      for (auto& hm : lr.heads)
        if (is_k ? hm.k.has_value() : hm.v.has_value()) fix(is_k ? *hm.k : *hm.v, where);
      for (std::int64_t h = 0; h < H; ++h) {
        const kv_method& km =
            is_k ? lr.k_of(static_cast<std::size_t>(h)) : lr.v_of(static_cast<std::size_t>(h));
        if (km.kind != kv_method_kind::ae) continue;
        any = true;
        const std::string pre =
            "layers." + std::to_string(l) + "." + stream + ".heads." + std::to_string(h) + ".ae.";
        take(f, pre + "encoder.weight", {latent, d}, out);
        take(f, pre + "encoder.bias", {latent}, out);
        take(f, pre + "decoder.weight", {d, latent}, out);
        take(f, pre + "decoder.bias", {d}, out);
        if (hidden > 0) {
          take(f, pre + "encoder.mlp.fc1.weight", {hidden, d}, out);
          take(f, pre + "encoder.mlp.fc1.bias", {hidden}, out);
          take(f, pre + "encoder.mlp.fc2.weight", {latent, hidden}, out);
          take(f, pre + "decoder.mlp.fc1.weight", {hidden, latent}, out);
          take(f, pre + "decoder.mlp.fc1.bias", {hidden}, out);
          take(f, pre + "decoder.mlp.fc2.weight", {d, hidden}, out);
        }
      }
    }
  }
  KVCAL_CHECK(any, ae_path, ": --ae given, but the recipe uses no ae method");
  return out;
}

preset_trained_tensors apply_policy_file(preset_recipe& r, const std::string& policy_path,
                                         const model_config& cfg, const std::string& config_path) {
  const safetensors_file f(policy_path);
  const nlohmann::json m = read_meta(f, "kvcal.policy", "kvcal.policy", 1, cfg, config_path);
  const std::vector<int> hidden = m.at("hidden").get<std::vector<int>>();
  KVCAL_CHECK(hidden.size() <= 1, policy_path, ": ", hidden.size(), " hidden layers ",
              nlohmann::json(hidden).dump(),
              ": a preset's learned policy is linear or Linear -> ReLU -> Linear (one hidden "
              "layer); train with --hidden N (one width) or --arch linear to export");
  const std::string features = m.at("features").get<std::string>();
  const std::int64_t in_dim = m.at("in_dim").get<std::int64_t>();
  const std::int64_t mlp_hidden = hidden.empty() ? 0 : hidden[0];
  const std::int64_t H = r.model.n_kv_heads;
  preset_trained_tensors out;
  bool any = false;
  for (std::size_t l = 0; l < r.layers.size(); ++l) {
    learned_params* lp = nullptr;
    if (r.layers[l].policy.kind == token_policy_kind::learned) lp = &r.layers[l].policy.learned;
    if (!lp) continue;
    any = true;
    KVCAL_CHECK(policy_features_name(lp->features) == features, policy_path,
                ": the policy was trained on ", features, " features, the recipe's layer ", l,
                " uses ", policy_features_name(lp->features));
    lp->in_dim = in_dim;
    lp->mlp_hidden = mlp_hidden;
    const std::string pre = "layers." + std::to_string(l) + ".policy.";
    if (mlp_hidden == 0) {
      take(f, pre + "weight", {H, in_dim}, out);
      take(f, pre + "bias", {H}, out);
    } else {
      take(f, pre + "fc1.weight", {mlp_hidden, in_dim}, out);
      take(f, pre + "fc1.bias", {mlp_hidden}, out);
      take(f, pre + "fc2.weight", {H, mlp_hidden}, out);
      take(f, pre + "fc2.bias", {H}, out);
    }
  }
  KVCAL_CHECK(any, policy_path, ": --policy given, but the recipe uses no learned policy");
  return out;
}

}  // namespace kvcal
