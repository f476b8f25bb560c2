#include "runtime/preset_report.h"

#include <iomanip>
#include <nlohmann/json.hpp>
#include <ostream>
#include <sstream>

#include "runtime/byte_accounting.h"
#include "runtime/preset.h"

namespace kvcal {

namespace {

std::string latent_str(const char* what, int size, int bits) {
  std::ostringstream os;
  os << what << " " << size << (bits == 16 ? " fp16" : bits == 8 ? " int8" : " int4");
  return os.str();
}

std::string policy_str(const layer_recipe& l) {
  const token_policy& p = l.policy;
  std::ostringstream os;
  os << token_policy_name(p.kind);
  switch (p.kind) {
    case token_policy_kind::window:
      os << " " << p.sinks << "+" << p.recent;
      break;
    case token_policy_kind::h2o:
      os << " " << p.heavy << "/" << p.recent_fraction;
      break;
    case token_policy_kind::cluster:
      os << " k" << p.clusters;
      break;
    case token_policy_kind::learned:
      os << " " << policy_features_name(p.learned.features);
      if (p.learned.mlp_hidden) os << " mlp" << p.learned.mlp_hidden;
      if (p.learned.threshold) os << " >" << *p.learned.threshold;
      break;
    default:
      break;
  }
  return os.str();
}

std::string budget_str(const token_budget& b) {
  std::ostringstream os;
  if (b.kind == budget_kind::tokens)
    os << b.tokens << " tok";
  else if (b.kind == budget_kind::retain)
    os << std::setprecision(3) << b.retain * 100 << "%";
  else
    os << "-";
  return os.str();
}

std::string bytes_str(double b) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB"};
  int i = 0;
  while (b >= 1024 && i < 3) {
    b /= 1024;
    ++i;
  }
  std::ostringstream os;
  os << std::fixed << std::setprecision(i ? 2 : 0) << b << " " << unit[i];
  return os.str();
}

std::string head_overrides(const layer_recipe& l) {
  std::ostringstream os;
  for (std::size_t h = 0; h < l.heads.size(); ++h) {
    if (l.heads[h].k) os << " h" << h << ".k=" << describe_method(*l.heads[h].k);
    if (l.heads[h].v) os << " h" << h << ".v=" << describe_method(*l.heads[h].v);
  }
  if (!l.head_budgets.empty()) {
    os << " head budgets";
    for (const auto& b : l.head_budgets) os << " " << budget_str(b);
  }
  return os.str();
}

}  // namespace

std::string describe_method(const kv_method& m) {
  std::ostringstream os;
  switch (m.kind) {
    case kv_method_kind::none:
      os << "fp16";
      break;
    case kv_method_kind::quant:
      os << m.quant.bits << "b " << (m.quant.axis == quant_axis::per_channel ? "ch" : "tok") << " g"
         << m.quant.group << (m.quant.symmetric ? " sym" : "");
      break;
    case kv_method_kind::pca:
      os << latent_str("pca", m.pca.rank, m.pca.latent_bits);
      break;
    case kv_method_kind::ae:
      os << latent_str("ae", m.ae.latent, m.ae.latent_bits);
      if (m.ae.hidden > 0) os << " mlp" << m.ae.hidden;  // MLP autoencoder of that width
      break;
  }
  return os.str();
}

void print_recipe(const preset_recipe& r, double fixed_bytes,
                  const std::vector<std::int64_t>& contexts, std::ostream& out) {
  out << "recipe: " << r.name << (r.description.empty() ? "" : " - " + r.description) << "\n";
  out << "model:  " << r.model.model_type << ", " << r.model.n_layers << " layers, "
      << r.model.n_kv_heads << " KV heads, head_dim " << r.model.head_dim << ", RoPE theta "
      << r.model.rope.theta << " (" << rope_type_name(r.model.rope.type) << "), config sha256 "
      << r.model.config_sha256.substr(0, 12) << "\n";
  if (r.adaptive.enabled)
    out << "adaptive: no compression up to " << r.adaptive.compress_after
        << " tokens; then the last " << r.adaptive.keep_recent << " stay fp16\n";
  const calibration_needs needs = needs_of(r);
  if (needs.any()) out << "calibrated tensors: " << needs.describe() << "\n";

  out << std::left << std::setw(6) << "layer" << std::setw(18) << "K" << std::setw(18) << "V"
      << std::setw(20) << "policy" << std::setw(9) << "budget" << std::setw(7) << "guard"
      << "residual\n";
  // Consecutive identical layers collapse into one row ("0-27").
  std::size_t i = 0;
  while (i < r.layers.size()) {
    std::size_t j = i + 1;
    const auto row = [&](const layer_recipe& l) {
      std::ostringstream os;
      os << std::left << std::setw(18) << describe_method(l.k) << std::setw(18)
         << describe_method(l.v) << std::setw(20) << policy_str(l) << std::setw(9)
         << budget_str(l.budget) << std::setw(7)
         << (std::to_string(static_cast<int>(l.guard * 100 + 0.5)) + "%") << l.residual
         << head_overrides(l);
      return os.str();
    };
    const std::string s = row(r.layers[i]);
    while (j < r.layers.size() && row(r.layers[j]) == s) ++j;
    std::string name = std::to_string(i) + (j - i > 1 ? "-" + std::to_string(j - 1) : "");
    out << std::left << std::setw(6) << name << s << "\n";
    i = j;
  }

  out << "byte accounting (K+V, all layers; fp16 = 2 x layers x KV heads x head_dim x 2 "
         "B/token):\n";
  out << std::right << std::setw(9) << "context" << std::setw(14) << "bytes/token" << std::setw(14)
      << "fp16 B/token" << std::setw(9) << "ratio" << std::setw(10) << "retained" << std::setw(14)
      << "held"
      << "\n";
  bool bound = false;
  for (std::int64_t L : contexts) {
    const byte_accounting a = account_bytes(r, L, fixed_bytes);
    bound = bound || a.upper_bound;
    out << std::right << std::setw(9) << L << std::setw(14) << std::fixed << std::setprecision(1)
        << a.bytes_per_token() << std::setw(14) << a.fp16_bytes / static_cast<double>(L)
        << std::setw(8) << std::setprecision(2) << a.ratio() << "x" << std::setw(9)
        << std::setprecision(1) << a.retained_fraction() * 100 << "%" << std::setw(14)
        << bytes_str(a.total()) << "\n";
    out.unsetf(std::ios::floatfield);
  }
  out << "fixed: " << bytes_str(fixed_bytes) << " of tensors (bases, weights), not in the ratio\n";
  if (bound) out << "note: learned threshold policies count every token (upper bound on bytes)\n";
}

void describe_preset(const std::string& path, std::ostream& out) {
  preset_file p(path);
  // The file's own version (older versions are read too), not the one this build writes.
  const nlohmann::json meta = nlohmann::json::parse(p.tensors().metadata().at(preset_metadata_key));
  out << path << ": kvcal preset, format " << preset_format_name << " version "
      << meta.at("version").get<int>() << ", " << p.tensors().tensors().size() << " tensors\n";
  print_recipe(p.recipe(), static_cast<double>(p.fixed_bytes()), {2048, 8192, 32768}, out);
}

}  // namespace kvcal
