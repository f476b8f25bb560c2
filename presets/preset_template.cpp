#include "presets/preset_template.h"

#include <cmath>
#include <utility>

#include <nlohmann/json.hpp>

#include "kernels/common/error.h"

namespace kvcal {

namespace detail {
// presets/embed_templates.cmake generates it from presets/templates/*.json.
const std::vector<std::pair<std::string, std::string>>& embedded_preset_templates();
}  // namespace detail

using json = nlohmann::json;

std::vector<std::string> preset_template_names() {
  std::vector<std::string> names;
  for (const auto& [name, text] : detail::embedded_preset_templates()) names.push_back(name);
  return names;
}

json preset_template(const std::string& name) {
  std::string known;
  for (const auto& [n, text] : detail::embedded_preset_templates()) {
    if (n == name) return json::parse(text);
    known += (known.empty() ? "" : ", ") + n;
  }
  KVCAL_FAIL("unknown template '", name, "' (known: ", known, ")");
}

std::vector<double> pyramid_retain(double first, double middle, double last,
                                   std::int64_t n_layers) {
  std::vector<double> r(static_cast<std::size_t>(n_layers));
  const std::int64_t mid = n_layers / 2;
  for (std::int64_t l = 0; l < n_layers; ++l) {
    double x;
    if (n_layers == 1) {
      x = first;
    } else if (middle < 0) {
      x = first + (last - first) * static_cast<double>(l) / static_cast<double>(n_layers - 1);
    } else if (l <= mid) {
      x = mid == 0 ? first : first + (middle - first) * static_cast<double>(l) / mid;
    } else if (last < 0) {
      x = middle;
    } else {
      x = middle + (last - middle) * static_cast<double>(l - mid) /
                       static_cast<double>(n_layers - 1 - mid);
    }
    r[static_cast<std::size_t>(l)] = std::round(x * 1e6) / 1e6;  // stable, readable JSON
  }
  return r;
}

namespace {

double fraction(const json& p, const char* key, const std::string& src, bool required) {
  if (!p.contains(key)) {
    KVCAL_CHECK(!required, src, ": budget.pyramid.", key, ": missing");
    return -1;
  }
  const json& v = p.at(key);
  KVCAL_CHECK(v.is_number() && v.get<double>() > 0 && v.get<double>() <= 1, src,
              ": budget.pyramid.", key, ": ", v.dump(), " is not a fraction in (0, 1]");
  return v.get<double>();
}

}  // namespace

preset_recipe expand_recipe(const json& j, const model_config& cfg, const std::string& source,
                            const recipe_parse_options& opts) {
  KVCAL_CHECK(j.is_object(), source, ": expected a JSON object, got ", j.type_name());
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    KVCAL_CHECK(k == "name" || k == "description" || k == "adaptive" || k == "layer" ||
                    k == "layers" || k == "budget",
                source, ": ", k, ": unknown field",
                k == "format" || k == "version" || k == "model"
                    ? " (templates and recipe files take the model from --model)"
                    : "");
  }
  KVCAL_CHECK(j.contains("name"), source, ": name: missing");
  KVCAL_CHECK(j.contains("layer") != j.contains("layers"), source,
              ": give exactly one of 'layer' (for every layer) and 'layers' (one per layer)");
  const std::int64_t n = cfg.num_hidden_layers;
  json layers = json::array();
  if (j.contains("layers")) {
    KVCAL_CHECK(!j.contains("budget"), source,
                ": budget: only with 'layer'; with 'layers' give each layer its budget");
    layers = j.at("layers");
  } else {
    const json& layer = j.at("layer");
    KVCAL_CHECK(layer.is_object(), source, ": layer: expected an object, got ", layer.dump());
    std::vector<json> budgets(static_cast<std::size_t>(n));
    if (j.contains("budget")) {
      KVCAL_CHECK(!layer.contains("budget"), source,
                  ": layer.budget and budget both given; keep one");
      const json& b = j.at("budget");
      if (b.is_object() && b.contains("pyramid")) {
        const json& p = b.at("pyramid");
        KVCAL_CHECK(p.is_object() && b.size() == 1, source,
                    ": budget.pyramid: expected {\"first\", \"middle\", \"last\"}");
        for (auto it = p.begin(); it != p.end(); ++it)
          KVCAL_CHECK(it.key() == "first" || it.key() == "middle" || it.key() == "last", source,
                      ": budget.pyramid.", it.key(), ": unknown field");
        const double first = fraction(p, "first", source, true);
        const double middle = fraction(p, "middle", source, false);
        const double last = fraction(p, "last", source, middle < 0);
        const auto r = pyramid_retain(first, middle, last, n);
        for (std::int64_t l = 0; l < n; ++l)
          budgets[static_cast<std::size_t>(l)] = {{"retain", r[static_cast<std::size_t>(l)]}};
      } else {
        for (auto& x : budgets) x = b;  // validated per layer by parse_recipe
      }
    }
    for (std::int64_t l = 0; l < n; ++l) {
      json e = layer;
      if (!budgets[static_cast<std::size_t>(l)].is_null())
        e["budget"] = budgets[static_cast<std::size_t>(l)];
      layers.push_back(e);
    }
  }
  // Learned policies read the hidden state or the key: their width comes from the model.
  if (layers.is_array()) {
    for (auto& e : layers) {
      if (!e.is_object() || !e.contains("policy") || !e["policy"].is_object() ||
          !e["policy"].contains("learned") || !e["policy"]["learned"].is_object())
        continue;
      json& p = e["policy"]["learned"];
      if (p.contains("in_dim")) continue;
      const bool key = p.value("features", std::string("hidden")) == "key";
      p["in_dim"] = key ? cfg.head_dim : cfg.hidden_size;
    }
  }
  const model_fingerprint f = fingerprint_of(cfg);
  json full{{"format", preset_format_name},
            {"version", preset_format_version},
            {"name", j.at("name")},
            {"model",
             {{"model_type", f.model_type},
              {"n_layers", f.n_layers},
              {"n_kv_heads", f.n_kv_heads},
              {"head_dim", f.head_dim},
              {"rope", rope_to_json(f.rope)},
              {"config_sha256", f.config_sha256}}},
            {"layers", layers}};
  if (j.contains("description")) full["description"] = j.at("description");
  if (j.contains("adaptive")) full["adaptive"] = j.at("adaptive");
  return parse_recipe(full, source, opts);
}

}  // namespace kvcal
