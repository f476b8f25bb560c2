#include "presets/preset_pca.h"

#include <nlohmann/json.hpp>

#include "kernels/common/error.h"
#include "kernels/common/log.h"

namespace kvcal {

namespace {

void check_model(const pca_file& f, const std::string& pca_path, const model_config& cfg,
                 const std::string& config_path) {
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(f.model_json);
  } catch (const nlohmann::json::exception& e) {
    KVCAL_FAIL(pca_path, ": the model fingerprint is not JSON: ", e.what());
  }
  const model_fingerprint want = fingerprint_of(cfg);
  auto field = [&](const char* name, const nlohmann::json& mine) {
    if (!m.contains(name)) return;
    KVCAL_CHECK(m[name] == mine, pca_path, ": model fingerprint: ", name, " is ", m[name].dump(),
                " in the PCA file, ", mine.dump(), " in ", config_path);
  };
  field("model_type", want.model_type);
  field("n_layers", want.n_layers);
  field("n_kv_heads", want.n_kv_heads);
  field("head_dim", want.head_dim);
  field("config_sha256", want.config_sha256);
  KVCAL_CHECK(
      f.n_layers == want.n_layers && f.n_kv_heads == want.n_kv_heads && f.head_dim == want.head_dim,
      pca_path, ": fitted for ", f.n_layers, " layers x ", f.n_kv_heads, " KV heads x head_dim ",
      f.head_dim, ", the model has ", want.n_layers, " x ", want.n_kv_heads, " x ", want.head_dim);
}

}  // namespace

preset_pca_tensors apply_pca_file(preset_recipe& r, const pca_file& f, const std::string& pca_path,
                                  const model_config& cfg, const std::string& config_path) {
  check_model(f, pca_path, cfg, config_path);
  const std::int64_t d = f.head_dim, H = f.n_kv_heads;
  preset_pca_tensors out;
  bool any = false;
  for (std::size_t l = 0; l < r.layers.size(); ++l) {
    layer_recipe& lr = r.layers[l];
    for (const char* stream : {"k", "v"}) {
      const bool is_k = stream[0] == 'k';
      const std::string what = is_k ? "K" : "V";
      // Ranks per head: from the recipe, or fit-pca's where the recipe leaves 0.
      std::vector<int> ranks(static_cast<std::size_t>(H), 0);
      std::vector<const pca_block*> blocks(static_cast<std::size_t>(H), nullptr);
      bool uses_pca = false;
      for (std::int64_t h = 0; h < H; ++h) {
        const auto hs = static_cast<std::size_t>(h);
        const kv_method& m = is_k ? lr.k_of(hs) : lr.v_of(hs);
        if (m.kind != kv_method_kind::pca) continue;
        uses_pca = any = true;
        const pca_block* b = f.find(stream, static_cast<std::int64_t>(l), h);
        KVCAL_CHECK(b != nullptr, pca_path, ": no ", what, " basis for layer ", l, ", KV head ", h,
                    " (fitted targets: ", nlohmann::json(f.targets).dump(),
                    "; K uses the pre-RoPE fit 'k')");
        blocks[hs] = b;
        ranks[hs] = m.pca.rank > 0 ? m.pca.rank : static_cast<int>(b->rank);
        KVCAL_CHECK(ranks[hs] >= 1 && ranks[hs] <= d, pca_path, ": layer ", l, " ", what, " rank ",
                    ranks[hs], " outside [1, head_dim = ", d, "]");
        if (m.pca.latent_bits != f.latent_bits && m.pca.rank == 0)
          log_warn(pca_path, ": ranks were chosen for ", f.latent_bits,
                   "-bit latents, the recipe stores ", m.pca.latent_bits, "-bit latents");
      }
      if (!uses_pca) continue;
      // Write the ranks back: one layer-level rank when the heads agree, else per-head overrides.
      for (std::int64_t h = 0; h < H; ++h) {
        const auto hs = static_cast<std::size_t>(h);
        if (!blocks[hs]) continue;
        const bool head_override = hs < lr.heads.size() &&
                                   (is_k ? lr.heads[hs].k.has_value() : lr.heads[hs].v.has_value());
        if (head_override) {
          (is_k ? *lr.heads[hs].k : *lr.heads[hs].v).pca.rank = ranks[hs];
          continue;
        }
        kv_method& layer_m = is_k ? lr.k : lr.v;
        if (layer_m.pca.rank == 0 || layer_m.pca.rank == ranks[hs]) {
          layer_m.pca.rank = ranks[hs];
        } else {
          if (lr.heads.empty()) lr.heads.resize(static_cast<std::size_t>(H));
          kv_method hm = layer_m;
          hm.pca.rank = ranks[hs];
          (is_k ? lr.heads[hs].k : lr.heads[hs].v) = hm;
        }
      }
      for (std::int64_t h = 0; h < H; ++h) {
        const auto hs = static_cast<std::size_t>(h);
        const pca_block* b = blocks[hs];
        if (!b) continue;
        const std::int64_t rank = ranks[hs];
        const std::string prefix =
            "layers." + std::to_string(l) + "." + stream + ".heads." + std::to_string(h) + ".pca.";
        std::vector<float>& basis = out.storage.emplace_back(static_cast<std::size_t>(rank * d));
        for (std::int64_t j = 0; j < rank; ++j)  // row j = principal axis j = column j of B
          for (std::int64_t i = 0; i < d; ++i)
            basis[static_cast<std::size_t>(j * d + i)] =
                static_cast<float>(b->basis[static_cast<std::size_t>(i * d + j)]);
        out.tensors.push_back({prefix + "basis", st_dtype::F32, {rank, d}, basis.data()});
        std::vector<float>& mean = out.storage.emplace_back(b->mean.begin(), b->mean.end());
        out.tensors.push_back({prefix + "mean", st_dtype::F32, {d}, mean.data()});
        out.bytes += static_cast<double>((rank * d + d) * 4);
      }
    }
  }
  KVCAL_CHECK(any, pca_path, ": --pca given, but the recipe uses no PCA method");
  return out;
}

}  // namespace kvcal
