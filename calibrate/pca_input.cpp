#include "calibrate/pca_input.h"

#include <nlohmann/json.hpp>
#include <vector>

#include "kernels/common/error.h"

namespace kvcal {

pca_input::pca_input(const std::string& path) : file_(h5_file::open_read(path)) {
  info_.path = path;
  KVCAL_CHECK(file_.has_attr("format"), path, ": not a kvcal capture (no 'format' attribute)");
  const std::string fmt = file_.get_string_attr("format");
  KVCAL_CHECK(fmt == capture_format_name, path, ": format is '", fmt, "', expected '",
              capture_format_name, "'");
  const std::int64_t version = file_.get_int_attr("version");
  KVCAL_CHECK(version == capture_format_version, path, ": capture format version ", version,
              ", this build reads version ", capture_format_version);
  info_.model_json = file_.get_string_attr("model");
  info_.n_layers = file_.get_int_attr("n_layers");
  info_.n_kv_heads = file_.get_int_attr("n_kv_heads");
  info_.n_heads = file_.has_attr("n_heads") ? file_.get_int_attr("n_heads") : info_.n_kv_heads;
  info_.head_dim = file_.get_int_attr("head_dim");
  info_.n_tokens = file_.get_int_attr("n_tokens");
  info_.dtype = file_.has_attr("dtype") ? file_.get_string_attr("dtype") : "";
  KVCAL_CHECK(info_.n_layers > 0 && info_.n_kv_heads > 0 && info_.head_dim > 0, path,
              ": n_layers / n_kv_heads / head_dim must be positive (", info_.n_layers, " / ",
              info_.n_kv_heads, " / ", info_.head_dim, ")");
  if (file_.has_attr("layers")) {
    try {
      info_.layers =
          nlohmann::json::parse(file_.get_string_attr("layers")).get<std::vector<std::int64_t>>();
    } catch (const nlohmann::json::exception& e) {
      KVCAL_FAIL(path, ": the 'layers' attribute is not a JSON list of layer indices: ", e.what());
    }
    for (std::int64_t l : info_.layers)
      KVCAL_CHECK(l >= 0 && l < info_.n_layers, path, ": recorded layer ", l, " outside [0, ",
                  info_.n_layers, ")");
  } else {
    for (std::int64_t l = 0; l < info_.n_layers; ++l) info_.layers.push_back(l);
  }
  KVCAL_CHECK(!info_.layers.empty(), path, ": no recorded layers");
  KVCAL_CHECK(info_.n_tokens >= 0, path, ": n_tokens is negative (", info_.n_tokens, ")");
}

std::string pca_input::dataset_path(std::int64_t layer, const std::string& target) {
  return "/layers/" + std::to_string(layer) + "/" + target;
}

bool pca_input::has(std::int64_t layer, const std::string& target) const {
  return h5_exists(file_, dataset_path(layer, target));
}

void pca_input::check_dataset(std::int64_t layer, const std::string& target) const {
  const std::string p = dataset_path(layer, target);
  KVCAL_CHECK(h5_exists(file_, p), info_.path, ": missing dataset '", p,
              "' (was this target captured? see --target)");
  const std::vector<std::int64_t> dims = h5_dataset_dims(file_, p);
  KVCAL_CHECK(dims.size() == 3 && dims[1] == info_.n_kv_heads && dims[2] == info_.head_dim,
              info_.path, ": '", p, "' must be [N, ", info_.n_kv_heads, ", ", info_.head_dim, "]");
  KVCAL_CHECK(dims[0] >= info_.n_tokens, info_.path, ": '", p, "' has ", dims[0],
              " rows but n_tokens is ", info_.n_tokens);
  h5_dataset_float_type(file_, p);  // throws for non-float data
}

void pca_input::read_rows(std::int64_t layer, const std::string& target, std::int64_t t0,
                          std::int64_t n, float* out) const {
  KVCAL_CHECK(t0 >= 0 && t0 + n <= info_.n_tokens, info_.path, ": rows [", t0, ", ", t0 + n,
              ") outside the ", info_.n_tokens, " valid tokens");
  h5_read_rows(file_, dataset_path(layer, target), t0, n, out);
}

void pca_input::read_rows_f16(std::int64_t layer, const std::string& target, std::int64_t t0,
                              std::int64_t n, std::uint16_t* out) const {
  KVCAL_CHECK(t0 >= 0 && t0 + n <= info_.n_tokens, info_.path, ": rows [", t0, ", ", t0 + n,
              ") outside the ", info_.n_tokens, " valid tokens");
  h5_read_rows_f16(file_, dataset_path(layer, target), t0, n, out);
}

}  // namespace kvcal
