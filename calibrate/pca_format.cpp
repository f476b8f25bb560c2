#include "calibrate/pca_format.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "calibrate/h5_array.h"
#include "kernels/common/error.h"
#include "runtime/io/atomic_file.h"

namespace kvcal {

const pca_block* pca_file::find(const std::string& target, std::int64_t layer,
                                std::int64_t head) const {
  const std::int64_t h = granularity == "layer" ? -1 : head;
  for (const auto& b : blocks)
    if (b.target == target && b.layer == layer && b.head == h) return &b;
  return nullptr;
}

bool pca_file::has_target(const std::string& target) const {
  for (const auto& t : targets)
    if (t == target) return true;
  return false;
}

std::string pca_block_path(const std::string& target, std::int64_t layer, std::int64_t head) {
  return "/" + target + "/" + std::to_string(layer) + "/" +
         (head < 0 ? std::string("all") : std::to_string(head));
}

namespace {

void check_block(const pca_block& b, std::int64_t d, const std::string& where) {
  const std::string p = pca_block_path(b.target, b.layer, b.head);
  KVCAL_CHECK(static_cast<std::int64_t>(b.basis.size()) == d * d &&
                  static_cast<std::int64_t>(b.eigenvalues.size()) == d &&
                  static_cast<std::int64_t>(b.mean.size()) == d,
              where, ": ", p, ": basis / eigenvalues / mean must be [", d, ", ", d, "] / [", d,
              "] / [", d, "]");
  KVCAL_CHECK(b.rank >= 1 && b.rank <= d, where, ": ", p, ": rank ", b.rank, " outside [1, ", d,
              "]");
  KVCAL_CHECK(b.count > 0, where, ": ", p, ": count ", b.count, " is not positive");
}

}  // namespace

void write_pca_file(const std::string& path, const pca_file& p) {
  for (const auto& b : p.blocks) check_block(b, p.head_dim, path);
  atomic_output out(path);
  {
    h5_file f = h5_file::create(out.temp_path());
    f.set_attr("format", std::string(pca_format_name));
    f.set_attr("version", std::int64_t{pca_format_version});
    f.set_attr("model", p.model_json);
    nlohmann::json src = nlohmann::json::array();
    for (const auto& s : p.sources)
      src.push_back({{"path", s.path}, {"sha256", s.sha256}, {"n_tokens", s.n_tokens}});
    f.set_attr("sources", src.dump());
    f.set_attr("granularity", p.granularity);
    f.set_attr("centered", std::int64_t{p.centered ? 1 : 0});
    f.set_attr("latent_bits", std::int64_t{p.latent_bits});
    f.set_attr("rank_rule", p.rank_rule_json);
    f.set_attr("targets", nlohmann::json(p.targets).dump());
    f.set_attr("n_layers", p.n_layers);
    f.set_attr("layers", nlohmann::json(p.layers).dump());
    f.set_attr("n_kv_heads", p.n_kv_heads);
    f.set_attr("head_dim", p.head_dim);
    f.set_attr("n_tokens", p.n_tokens);
    const std::int64_t d = p.head_dim;
    for (const auto& b : p.blocks) {
      const std::string g = pca_block_path(b.target, b.layer, b.head);
      h5_write_f64(f, g + "/basis", {d, d}, b.basis.data());
      h5_write_f64(f, g + "/eigenvalues", {d}, b.eigenvalues.data());
      h5_write_f64(f, g + "/mean", {d}, b.mean.data());
      h5_write_i64(f, g + "/count", b.count);
      h5_write_i64(f, g + "/rank", b.rank);
    }
    f.flush();
  }
  out.commit();
}

bool is_pca_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[8] = {};
  in.read(magic, 8);
  if (!in || std::string(magic, 8) != std::string("\x89HDF\r\n\x1a\n", 8)) return false;
  try {
    h5_file f = h5_file::open_read(path);
    return f.has_attr("format") && f.get_string_attr("format") == pca_format_name;
  } catch (const kvcal::error&) {
    return false;
  }
}

pca_file read_pca_file(const std::string& path) {
  h5_file f = h5_file::open_read(path);
  KVCAL_CHECK(f.has_attr("format"), path, ": not a kvcal PCA file (no 'format' attribute)");
  const std::string fmt = f.get_string_attr("format");
  KVCAL_CHECK(fmt == pca_format_name, path, ": format is '", fmt, "', expected '", pca_format_name,
              "'");
  const std::int64_t version = f.get_int_attr("version");
  KVCAL_CHECK(version == pca_format_version, path, ": PCA file format version ", version,
              (version > pca_format_version ? ", newer than" : ", older than"),
              " this build reads (", pca_format_version, ")");
  pca_file p;
  p.model_json = f.get_string_attr("model");
  try {
    for (const auto& s : nlohmann::json::parse(f.get_string_attr("sources")))
      p.sources.push_back({s.at("path").get<std::string>(), s.at("sha256").get<std::string>(),
                           s.value("n_tokens", std::int64_t{0})});
    p.targets = nlohmann::json::parse(f.get_string_attr("targets")).get<std::vector<std::string>>();
    p.layers = nlohmann::json::parse(f.get_string_attr("layers")).get<std::vector<std::int64_t>>();
    KVCAL_CHECK(nlohmann::json::parse(p.model_json).is_object(), path,
                ": the model attribute is not a JSON object");
  } catch (const nlohmann::json::exception& e) {
    KVCAL_FAIL(path, ": malformed JSON attribute: ", e.what());
  }
  p.granularity = f.get_string_attr("granularity");
  KVCAL_CHECK(p.granularity == "kv-head" || p.granularity == "layer", path, ": granularity '",
              p.granularity, "' is not kv-head or layer");
  p.centered = f.get_int_attr("centered") != 0;
  p.latent_bits = static_cast<int>(f.get_int_attr("latent_bits"));
  p.rank_rule_json = f.get_string_attr("rank_rule");
  p.n_layers = f.get_int_attr("n_layers");
  p.n_kv_heads = f.get_int_attr("n_kv_heads");
  p.head_dim = f.get_int_attr("head_dim");
  p.n_tokens = f.get_int_attr("n_tokens");
  const std::int64_t d = p.head_dim;
  KVCAL_CHECK(p.n_layers > 0 && p.n_kv_heads > 0 && d > 0, path,
              ": n_layers / n_kv_heads / head_dim must be positive");
  for (const auto& t : p.targets) {
    KVCAL_CHECK(t == "k" || t == "v" || t == "k_rope", path, ": unknown target '", t, "'");
    for (std::int64_t l : p.layers) {
      KVCAL_CHECK(l >= 0 && l < p.n_layers, path, ": layer ", l, " outside [0, ", p.n_layers, ")");
      const std::int64_t nh = p.granularity == "layer" ? 1 : p.n_kv_heads;
      for (std::int64_t h = 0; h < nh; ++h) {
        pca_block b;
        b.target = t;
        b.layer = l;
        b.head = p.granularity == "layer" ? -1 : h;
        const std::string g = pca_block_path(t, l, b.head);
        KVCAL_CHECK(h5_exists(f, g), path, ": missing block '", g, "'");
        b.basis = h5_read_f64(f, g + "/basis");
        b.eigenvalues = h5_read_f64(f, g + "/eigenvalues");
        b.mean = h5_read_f64(f, g + "/mean");
        b.count = h5_read_i64(f, g + "/count");
        b.rank = h5_read_i64(f, g + "/rank");
        check_block(b, d, path);
        p.blocks.push_back(std::move(b));
      }
    }
  }
  return p;
}

}  // namespace kvcal
