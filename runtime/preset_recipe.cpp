#include "runtime/preset_recipe.h"

#include <cmath>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kernels/common/error.h"

namespace kvcal {

using json = nlohmann::json;

const char* kv_method_name(kv_method_kind k) {
  switch (k) {
    case kv_method_kind::none:
      return "none";
    case kv_method_kind::quant:
      return "quant";
    case kv_method_kind::pca:
      return "pca";
    case kv_method_kind::ae:
      return "ae";
  }
  return "?";
}

const char* quant_axis_name(quant_axis a) {
  return a == quant_axis::per_channel ? "per-channel" : "per-token";
}

const char* token_policy_name(token_policy_kind k) {
  switch (k) {
    case token_policy_kind::full:
      return "full";
    case token_policy_kind::window:
      return "window";
    case token_policy_kind::h2o:
      return "h2o";
    case token_policy_kind::lru:
      return "lru";
    case token_policy_kind::cluster:
      return "cluster";
    case token_policy_kind::learned:
      return "learned";
  }
  return "?";
}

const char* policy_features_name(policy_features f) {
  return f == policy_features::hidden ? "hidden" : "key";
}

const kv_method& layer_recipe::k_of(std::size_t head) const {
  return head < heads.size() && heads[head].k ? *heads[head].k : k;
}
const kv_method& layer_recipe::v_of(std::size_t head) const {
  return head < heads.size() && heads[head].v ? *heads[head].v : v;
}
const token_budget& layer_recipe::budget_of(std::size_t head) const {
  return head < head_budgets.size() ? head_budgets[head] : budget;
}

namespace {

// Reads fields of one JSON object, naming "<source>: <path>.<key>" in every error.
class reader {
 public:
  reader(const json& j, const std::string& source, std::string path)
      : j_(j), src_(source), path_(std::move(path)) {
    KVCAL_CHECK(j.is_object(), src_, ": ", path_or_root(), ": expected an object, got ",
                j.type_name());
  }

  std::string at(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  bool has(const std::string& key) const { return j_.contains(key); }
  const json& raw(const std::string& key) const {
    KVCAL_CHECK(has(key), src_, ": ", at(key), ": missing");
    return j_.at(key);
  }
  // Rejects keys outside `allowed` (typos would otherwise be silently ignored).
  void only(std::initializer_list<const char*> allowed) const {
    for (auto it = j_.begin(); it != j_.end(); ++it) {
      bool ok = false;
      for (const char* a : allowed) ok = ok || it.key() == a;
      KVCAL_CHECK(ok, src_, ": ", at(it.key()), ": unknown field");
    }
  }
  std::int64_t integer(const std::string& key, std::int64_t lo, std::int64_t hi) const {
    const json& v = raw(key);
    KVCAL_CHECK(v.is_number_integer(), src_, ": ", at(key), ": expected an integer, got ",
                v.dump());
    std::int64_t x = v.get<std::int64_t>();
    KVCAL_CHECK(x >= lo && x <= hi, src_, ": ", at(key), ": ", x, " is outside [", lo, ", ", hi,
                "]");
    return x;
  }
  std::int64_t integer_or(const std::string& key, std::int64_t def, std::int64_t lo,
                          std::int64_t hi) const {
    return has(key) ? integer(key, lo, hi) : def;
  }
  int one_of(const std::string& key, std::initializer_list<int> allowed) const {
    const json& v = raw(key);
    KVCAL_CHECK(v.is_number_integer(), src_, ": ", at(key), ": expected an integer, got ",
                v.dump());
    auto x = v.get<std::int64_t>();
    std::string list;
    for (int a : allowed) {
      if (x == a) return a;
      list += (list.empty() ? "" : ",") + std::to_string(a);
    }
    KVCAL_FAIL(src_, ": ", at(key), ": ", x, " is not one of ", list);
  }
  double number(const std::string& key, double lo, double hi) const {
    const json& v = raw(key);
    KVCAL_CHECK(v.is_number(), src_, ": ", at(key), ": expected a number, got ", v.dump());
    double x = v.get<double>();
    KVCAL_CHECK(std::isfinite(x) && x >= lo && x <= hi, src_, ": ", at(key), ": ", x,
                " is outside [", lo, ", ", hi, "]");
    return x;
  }
  double number_or(const std::string& key, double def, double lo, double hi) const {
    return has(key) ? number(key, lo, hi) : def;
  }
  std::string string(const std::string& key) const {
    const json& v = raw(key);
    KVCAL_CHECK(v.is_string(), src_, ": ", at(key), ": expected a string, got ", v.dump());
    return v.get<std::string>();
  }
  std::string string_or(const std::string& key, const std::string& def) const {
    return has(key) ? string(key) : def;
  }
  bool boolean_or(const std::string& key, bool def) const {
    if (!has(key)) return def;
    const json& v = raw(key);
    KVCAL_CHECK(v.is_boolean(), src_, ": ", at(key), ": expected true or false, got ", v.dump());
    return v.get<bool>();
  }

 private:
  std::string path_or_root() const { return path_.empty() ? "(top level)" : path_; }
  const json& j_;
  const std::string& src_;
  std::string path_;
};

// A tagged union written as {"<kind>": {params}} or, for parameterless kinds, "<kind>".
std::pair<std::string, json> tagged(const json& j, const std::string& src,
                                    const std::string& path) {
  if (j.is_string()) return {j.get<std::string>(), json::object()};
  KVCAL_CHECK(j.is_object() && j.size() == 1, src, ": ", path,
              ": expected a string or an object with exactly one key, got ", j.dump());
  return {j.begin().key(), j.begin().value()};
}

struct ctx {
  const std::string& src;
  std::int64_t n_kv_heads;
  std::int64_t head_dim;
  bool allow_unset_rank;
  std::int64_t version = preset_format_version;
};

kv_method parse_method(const json& j, const ctx& c, const std::string& path) {
  auto [kind, body] = tagged(j, c.src, path);
  kv_method m;
  const std::string p = path + "." + kind;
  if (kind == "none") {
    m.kind = kv_method_kind::none;
    reader(body, c.src, p).only({});
  } else if (kind == "quant") {
    m.kind = kv_method_kind::quant;
    reader r(body, c.src, p);
    r.only({"bits", "group", "axis", "symmetric"});
    m.quant.bits = r.one_of("bits", {2, 3, 4, 8});
    m.quant.group = static_cast<int>(r.integer_or("group", 32, 1, 1 << 20));
    std::string axis = r.string_or("axis", "per-token");
    KVCAL_CHECK(axis == "per-channel" || axis == "per-token", c.src, ": ", r.at("axis"), ": '",
                axis, "' is not one of per-channel, per-token");
    m.quant.axis = axis == "per-channel" ? quant_axis::per_channel : quant_axis::per_token;
    m.quant.symmetric = r.boolean_or("symmetric", false);
    // Per-token groups run along the channels of one head vector: they must tile it.
    KVCAL_CHECK(m.quant.axis == quant_axis::per_channel || c.head_dim % m.quant.group == 0, c.src,
                ": ", r.at("group"), ": ", m.quant.group, " does not divide head_dim ", c.head_dim,
                " (per-token groups run along channels)");
  } else if (kind == "pca" || kind == "ae") {
    reader r(body, c.src, p);
    const bool pca = kind == "pca";
    const char* size_key = pca ? "rank" : "latent";
    if (pca)
      r.only({size_key, "latent_bits"});
    else
      r.only({size_key, "latent_bits", "hidden"});
    const std::int64_t lo = c.allow_unset_rank ? 0 : 1;
    int size = static_cast<int>(r.integer(size_key, lo, c.head_dim));
    int bits = r.has("latent_bits") ? r.one_of("latent_bits", {16, 8, 4}) : 16;
    if (pca) {
      m.kind = kv_method_kind::pca;
      m.pca = {size, bits};
    } else {
      KVCAL_CHECK(!r.has("hidden") || c.version >= 2, c.src, ": ", r.at("hidden"),
                  ": MLP autoencoders need format version 2, the file is version ", c.version);
      m.kind = kv_method_kind::ae;
      m.ae = {size, bits, static_cast<int>(r.integer_or("hidden", 0, 0, 1 << 20))};
    }
  } else {
    KVCAL_FAIL(c.src, ": ", path, ": unknown method '", kind, "' (none, quant, pca, ae)");
  }
  return m;
}

token_policy parse_policy(const json& j, const ctx& c, const std::string& path) {
  auto [kind, body] = tagged(j, c.src, path);
  token_policy t;
  reader r(body, c.src, path + "." + kind);
  if (kind == "full") {
    t.kind = token_policy_kind::full;
    r.only({});
  } else if (kind == "window") {
    t.kind = token_policy_kind::window;
    r.only({"sinks", "recent"});
    t.sinks = r.integer_or("sinks", 0, 0, INT64_C(1) << 40);
    t.recent = r.integer("recent", 1, INT64_C(1) << 40);
  } else if (kind == "h2o") {
    t.kind = token_policy_kind::h2o;
    r.only({"heavy", "recent"});
    t.heavy = r.number("heavy", 0.0, 1.0);
    t.recent_fraction = r.number("recent", 0.0, 1.0);
    KVCAL_CHECK(std::abs(t.heavy + t.recent_fraction - 1.0) < 1e-6, c.src, ": ", path,
                ".h2o: heavy + recent is ", t.heavy + t.recent_fraction,
                "; they are fractions of the budget and must sum to 1");
  } else if (kind == "lru") {
    t.kind = token_policy_kind::lru;
    r.only({});
  } else if (kind == "cluster") {
    t.kind = token_policy_kind::cluster;
    r.only({"k"});
    t.clusters = r.integer("k", 1, 1 << 20);
  } else if (kind == "learned") {
    t.kind = token_policy_kind::learned;
    r.only({"features", "in_dim", "mlp_hidden", "threshold"});
    std::string f = r.string_or("features", "hidden");
    KVCAL_CHECK(f == "hidden" || f == "key", c.src, ": ", r.at("features"), ": '", f,
                "' is not one of hidden, key");
    t.learned.features = f == "hidden" ? policy_features::hidden : policy_features::key;
    t.learned.in_dim = r.integer("in_dim", 1, 1 << 20);
    t.learned.mlp_hidden = r.integer_or("mlp_hidden", 0, 0, 1 << 20);
    if (r.has("threshold")) t.learned.threshold = r.number("threshold", -1e30, 1e30);
  } else {
    KVCAL_FAIL(c.src, ": ", path, ": unknown token policy '", kind,
               "' (full, window, h2o, lru, cluster, learned)");
  }
  return t;
}

token_budget parse_budget(const json& j, const ctx& c, const std::string& path) {
  KVCAL_CHECK(j.is_object() && j.size() == 1, c.src, ": ", path,
              ": expected {\"tokens\": N} or {\"retain\": fraction}, got ", j.dump());
  reader r(j, c.src, path);
  token_budget b;
  if (r.has("tokens")) {
    b.kind = budget_kind::tokens;
    b.tokens = r.integer("tokens", 1, INT64_C(1) << 40);
  } else if (r.has("retain")) {
    b.kind = budget_kind::retain;
    b.retain = r.number("retain", 1e-9, 1.0);
  } else {
    r.only({"tokens", "retain"});
  }
  return b;
}

layer_recipe parse_layer_entry(const json& j, const ctx& c, const std::string& path) {
  reader r(j, c.src, path);
  r.only({"k", "v", "heads", "policy", "budget", "head_budgets", "guard", "residual"});
  layer_recipe l;
  l.k = parse_method(r.raw("k"), c, r.at("k"));
  l.v = parse_method(r.raw("v"), c, r.at("v"));
  if (r.has("heads")) {
    const json& h = r.raw("heads");
    KVCAL_CHECK(h.is_array() && static_cast<std::int64_t>(h.size()) == c.n_kv_heads, c.src, ": ",
                r.at("heads"), ": expected an array of n_kv_heads = ", c.n_kv_heads,
                " entries, got ", h.is_array() ? std::to_string(h.size()) + " entries" : h.dump());
    for (std::size_t i = 0; i < h.size(); ++i) {
      const std::string hp = r.at("heads") + "[" + std::to_string(i) + "]";
      reader hr(h[i], c.src, hp);
      hr.only({"k", "v"});
      head_methods hm;
      if (hr.has("k")) hm.k = parse_method(hr.raw("k"), c, hr.at("k"));
      if (hr.has("v")) hm.v = parse_method(hr.raw("v"), c, hr.at("v"));
      l.heads.push_back(hm);
    }
  }
  l.policy = r.has("policy") ? parse_policy(r.raw("policy"), c, r.at("policy")) : token_policy{};
  if (r.has("budget")) l.budget = parse_budget(r.raw("budget"), c, r.at("budget"));
  if (r.has("head_budgets")) {
    const json& h = r.raw("head_budgets");
    KVCAL_CHECK(c.version >= 2, c.src, ": ", r.at("head_budgets"), ": not part of format version ",
                c.version, " (added in version 2)");
    KVCAL_CHECK(h.is_array() && static_cast<std::int64_t>(h.size()) == c.n_kv_heads, c.src, ": ",
                r.at("head_budgets"), ": expected an array of n_kv_heads = ", c.n_kv_heads,
                " budgets, got ", h.is_array() ? std::to_string(h.size()) + " entries" : h.dump());
    for (std::size_t i = 0; i < h.size(); ++i)
      l.head_budgets.push_back(
          parse_budget(h[i], c, r.at("head_budgets") + "[" + std::to_string(i) + "]"));
  }
  l.guard = r.number_or("guard", 0.0, 0.0, 1.0);
  l.residual = r.integer_or("residual", 0, 0, INT64_C(1) << 40);

  // Which policies need a budget: those that choose positions (window and full do not).
  const auto k = l.policy.kind;
  const bool needs_budget = k == token_policy_kind::h2o || k == token_policy_kind::lru ||
                            k == token_policy_kind::cluster ||
                            (k == token_policy_kind::learned && !l.policy.learned.threshold);
  KVCAL_CHECK(!needs_budget || l.budget.kind != budget_kind::none, c.src, ": ", r.at("budget"),
              ": missing (policy '", token_policy_name(k), "' keeps a budget of tokens",
              k == token_policy_kind::learned ? "; or give learned.threshold" : "", ")");
  KVCAL_CHECK(l.budget.kind == budget_kind::none || k != token_policy_kind::full, c.src, ": ",
              r.at("budget"), ": a budget needs an evicting policy (policy is 'full')");
  // Per-head budgets replace the layer's: only for policies that keep a budget of tokens.
  if (!l.head_budgets.empty()) {
    KVCAL_CHECK(k != token_policy_kind::full && k != token_policy_kind::window, c.src, ": ",
                r.at("head_budgets"), ": policy '", token_policy_name(k),
                "' takes no budget (h2o, lru, cluster and learned do)");
    KVCAL_CHECK(l.budget.kind != budget_kind::none, c.src, ": ", r.at("head_budgets"),
                ": needs the layer's \"budget\" too (the layer's total they split)");
  }
  if (k == token_policy_kind::learned && l.policy.learned.features == policy_features::key)
    KVCAL_CHECK(l.policy.learned.in_dim == c.head_dim, c.src, ": ", r.at("policy"),
                ".learned.in_dim: ", l.policy.learned.in_dim, " must equal head_dim ", c.head_dim,
                " for key features");
  return l;
}

rope_config parse_rope(const json& j, const std::string& src, const std::string& path) {
  reader r(j, src, path);
  r.only({"theta", "type", "factor", "low_freq_factor", "high_freq_factor",
          "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor",
          "mscale", "mscale_all_dim", "truncate", "partial_rotary_factor"});
  rope_config c;
  c.theta = r.number("theta", 0.0, 1e30);
  std::string t = r.string("type");
  bool found = false;
  for (rope_type rt : {rope_type::none, rope_type::linear, rope_type::dynamic, rope_type::llama3,
                       rope_type::yarn}) {
    if (t == rope_type_name(rt)) {
      c.type = rt;
      found = true;
    }
  }
  KVCAL_CHECK(found, src, ": ", r.at("type"), ": unknown RoPE type '", t, "'");
  c.factor = r.number_or("factor", c.factor, 0.0, 1e30);
  c.low_freq_factor = r.number_or("low_freq_factor", c.low_freq_factor, -1e30, 1e30);
  c.high_freq_factor = r.number_or("high_freq_factor", c.high_freq_factor, -1e30, 1e30);
  c.original_max_position_embeddings =
      r.integer_or("original_max_position_embeddings", 0, 0, INT64_C(1) << 40);
  c.beta_fast = r.number_or("beta_fast", c.beta_fast, -1e30, 1e30);
  c.beta_slow = r.number_or("beta_slow", c.beta_slow, -1e30, 1e30);
  c.attention_factor = r.number_or("attention_factor", c.attention_factor, -1e30, 1e30);
  c.mscale = r.number_or("mscale", c.mscale, -1e30, 1e30);
  c.mscale_all_dim = r.number_or("mscale_all_dim", c.mscale_all_dim, -1e30, 1e30);
  c.truncate = r.boolean_or("truncate", c.truncate);
  c.partial_rotary_factor = r.number_or("partial_rotary_factor", 1.0, 0.0, 1.0);
  return c;
}

}  // namespace

model_fingerprint fingerprint_of(const model_config& c) {
  model_fingerprint f;
  f.model_type = c.model_type;
  f.n_layers = c.num_hidden_layers;
  f.n_kv_heads = c.num_key_value_heads;
  f.head_dim = c.head_dim;
  f.rope = c.rope;
  f.config_sha256 = c.config_sha256;
  return f;
}

json rope_to_json(const rope_config& r) {
  return json{{"theta", r.theta},
              {"type", rope_type_name(r.type)},
              {"factor", r.factor},
              {"low_freq_factor", r.low_freq_factor},
              {"high_freq_factor", r.high_freq_factor},
              {"original_max_position_embeddings", r.original_max_position_embeddings},
              {"beta_fast", r.beta_fast},
              {"beta_slow", r.beta_slow},
              {"attention_factor", r.attention_factor},
              {"mscale", r.mscale},
              {"mscale_all_dim", r.mscale_all_dim},
              {"truncate", r.truncate},
              {"partial_rotary_factor", r.partial_rotary_factor}};
}

namespace {

json method_to_json(const kv_method& m) {
  switch (m.kind) {
    case kv_method_kind::none:
      return "none";
    case kv_method_kind::quant:
      return json{{"quant",
                   {{"bits", m.quant.bits},
                    {"group", m.quant.group},
                    {"axis", quant_axis_name(m.quant.axis)},
                    {"symmetric", m.quant.symmetric}}}};
    case kv_method_kind::pca:
      return json{{"pca", {{"rank", m.pca.rank}, {"latent_bits", m.pca.latent_bits}}}};
    case kv_method_kind::ae:
      return json{
          {"ae",
           {{"latent", m.ae.latent}, {"latent_bits", m.ae.latent_bits}, {"hidden", m.ae.hidden}}}};
  }
  return nullptr;
}

json policy_to_json(const token_policy& t) {
  switch (t.kind) {
    case token_policy_kind::full:
      return "full";
    case token_policy_kind::window:
      return json{{"window", {{"sinks", t.sinks}, {"recent", t.recent}}}};
    case token_policy_kind::h2o:
      return json{{"h2o", {{"heavy", t.heavy}, {"recent", t.recent_fraction}}}};
    case token_policy_kind::lru:
      return "lru";
    case token_policy_kind::cluster:
      return json{{"cluster", {{"k", t.clusters}}}};
    case token_policy_kind::learned: {
      json l{{"features", policy_features_name(t.learned.features)},
             {"in_dim", t.learned.in_dim},
             {"mlp_hidden", t.learned.mlp_hidden}};
      if (t.learned.threshold) l["threshold"] = *t.learned.threshold;
      return json{{"learned", l}};
    }
  }
  return nullptr;
}

json layer_json(const layer_recipe& l) {
  json j{{"k", method_to_json(l.k)}, {"v", method_to_json(l.v)}};
  if (!l.heads.empty()) {
    json heads = json::array();
    for (const auto& h : l.heads) {
      json e = json::object();
      if (h.k) e["k"] = method_to_json(*h.k);
      if (h.v) e["v"] = method_to_json(*h.v);
      heads.push_back(e);
    }
    j["heads"] = heads;
  }
  j["policy"] = policy_to_json(l.policy);
  if (l.budget.kind == budget_kind::tokens) j["budget"] = {{"tokens", l.budget.tokens}};
  if (l.budget.kind == budget_kind::retain) j["budget"] = {{"retain", l.budget.retain}};
  if (!l.head_budgets.empty()) {
    json hb = json::array();
    for (const auto& b : l.head_budgets)
      hb.push_back(b.kind == budget_kind::tokens ? json{{"tokens", b.tokens}}
                                                 : json{{"retain", b.retain}});
    j["head_budgets"] = hb;
  }
  j["guard"] = l.guard;
  j["residual"] = l.residual;
  return j;
}

}  // namespace

json recipe_to_json(const preset_recipe& r) {
  json j{{"format", preset_format_name}, {"version", preset_format_version}, {"name", r.name}};
  if (!r.description.empty()) j["description"] = r.description;
  j["model"] = {{"model_type", r.model.model_type},   {"n_layers", r.model.n_layers},
                {"n_kv_heads", r.model.n_kv_heads},   {"head_dim", r.model.head_dim},
                {"rope", rope_to_json(r.model.rope)}, {"config_sha256", r.model.config_sha256}};
  if (r.adaptive.enabled)
    j["adaptive"] = {{"compress_after", r.adaptive.compress_after},
                     {"keep_recent", r.adaptive.keep_recent}};
  json layers = json::array();
  for (const auto& l : r.layers) layers.push_back(layer_json(l));
  j["layers"] = layers;
  return j;
}

preset_recipe parse_recipe(const json& j, const std::string& source,
                           const recipe_parse_options& opts) {
  reader r(j, source, "");
  r.only({"format", "version", "name", "description", "model", "adaptive", "layers"});
  const std::string format = r.string("format");
  KVCAL_CHECK(format == preset_format_name, source, ": format: '", format, "' is not '",
              preset_format_name, "'");
  const std::int64_t version = r.integer("version", INT64_MIN, INT64_MAX);
  KVCAL_CHECK(version <= preset_format_version, source, ": version: the file is format version ",
              version, ", newer than this build reads (", preset_format_version, "); update kvcal");
  KVCAL_CHECK(version >= preset_format_min_version, source,
              ": version: the file is format version ", version,
              ", older than the oldest this build reads (", preset_format_min_version,
              "); re-export it with this kvcal");

  preset_recipe p;
  p.name = r.string("name");
  p.description = r.string_or("description", "");

  reader m(r.raw("model"), source, "model");
  m.only({"model_type", "n_layers", "n_kv_heads", "head_dim", "rope", "config_sha256"});
  p.model.model_type = m.string("model_type");
  p.model.n_layers = m.integer("n_layers", 1, 1 << 16);
  p.model.n_kv_heads = m.integer("n_kv_heads", 1, 1 << 16);
  p.model.head_dim = m.integer("head_dim", 1, 1 << 16);
  p.model.rope = parse_rope(m.raw("rope"), source, "model.rope");
  p.model.config_sha256 = m.string("config_sha256");

  if (r.has("adaptive")) {
    reader a(r.raw("adaptive"), source, "adaptive");
    a.only({"compress_after", "keep_recent"});
    p.adaptive.enabled = true;
    p.adaptive.compress_after = a.integer("compress_after", 0, INT64_C(1) << 40);
    p.adaptive.keep_recent = a.integer("keep_recent", 0, INT64_C(1) << 40);
  }

  const json& layers = r.raw("layers");
  KVCAL_CHECK(layers.is_array(), source, ": layers: expected an array, got ", layers.type_name());
  KVCAL_CHECK(static_cast<std::int64_t>(layers.size()) == p.model.n_layers, source,
              ": layers: ", layers.size(), " entries, but model.n_layers is ", p.model.n_layers);
  ctx c{source, p.model.n_kv_heads, p.model.head_dim, opts.allow_unset_rank, version};
  for (std::size_t i = 0; i < layers.size(); ++i)
    p.layers.push_back(parse_layer_entry(layers[i], c, "layers[" + std::to_string(i) + "]"));
  return p;
}

void check_fingerprint(const model_fingerprint& preset, const model_config& model,
                       const std::string& source, const std::string& config_source) {
  const model_fingerprint m = fingerprint_of(model);
  auto differ = [&](const std::string& field, const auto& a, const auto& b) {
    std::ostringstream os;
    os << source << ": model fingerprint: " << field << " is " << a << " in the preset, " << b
       << " in " << config_source << " (the preset was made for another model)";
    KVCAL_FAIL(os.str());
  };
  if (preset.model_type != m.model_type) differ("model_type", preset.model_type, m.model_type);
  if (preset.n_layers != m.n_layers) differ("n_layers", preset.n_layers, m.n_layers);
  if (preset.n_kv_heads != m.n_kv_heads) differ("n_kv_heads", preset.n_kv_heads, m.n_kv_heads);
  if (preset.head_dim != m.head_dim) differ("head_dim", preset.head_dim, m.head_dim);
  const json a = rope_to_json(preset.rope), b = rope_to_json(m.rope);
  for (auto it = a.begin(); it != a.end(); ++it)
    if (it.value() != b.at(it.key()))
      differ("rope." + it.key(), it.value().dump(), b.at(it.key()).dump());
  if (preset.config_sha256 != m.config_sha256)
    differ("config_sha256", preset.config_sha256, m.config_sha256);
}

bool operator==(const preset_recipe& a, const preset_recipe& b) {
  return recipe_to_json(a) == recipe_to_json(b);
}

}  // namespace kvcal
