#include "calibrate/pca_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <ostream>
#include <sstream>

#include "calibrate/rank_allocation.h"
#include "runtime/io/atomic_file.h"

namespace kvcal {

namespace {

std::string fixed(double v, int prec) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

std::string pad(const std::string& s, size_t w) {
  return s.size() >= w ? s : std::string(w - s.size(), ' ') + s;
}

std::vector<const pca_block*> blocks_of(const pca_file& f, const std::string& target,
                                        std::int64_t layer) {
  std::vector<const pca_block*> out;
  for (const auto& b : f.blocks)
    if (b.target == target && b.layer == layer) out.push_back(&b);
  return out;
}

std::vector<int> probe_ranks(std::int64_t d) {
  std::vector<int> r;
  for (std::int64_t div : {16, 8, 4, 2}) {
    const int v = static_cast<int>(std::max<std::int64_t>(1, d / div));
    if (r.empty() || r.back() != v) r.push_back(v);
  }
  return r;
}

const char* target_label(const std::string& t) {
  return t == "k" ? "K (pre-RoPE)" : t == "v" ? "V" : "K (post-RoPE)";
}

}  // namespace

double layer_energy(const pca_file& f, const std::string& target, std::int64_t layer, int rank) {
  const auto bs = blocks_of(f, target, layer);
  if (bs.empty()) return 0;
  double s = 0;
  for (const auto* b : bs) s += explained_energy(b->eigenvalues, rank);
  return s / static_cast<double>(bs.size());
}

double spectrum_spread(const std::vector<double>& ev) {
  if (ev.empty()) return 0;
  const double med = std::max(ev[ev.size() / 2], 0.0);
  return med > 0 ? std::max(ev[0], 0.0) / med : std::numeric_limits<double>::infinity();
}

void describe_pca(const pca_file& f, const std::string& path, std::ostream& os) {
  os << path << ": kvcal PCA file (" << pca_format_name << " v" << pca_format_version << ")\n";
  try {
    const auto m = nlohmann::json::parse(f.model_json);
    os << "  model: " << m.value("model_type", std::string("?")) << ", " << f.n_layers
       << " layers (" << f.layers.size() << " fitted), " << f.n_kv_heads << " KV heads, head_dim "
       << f.head_dim;
    if (m.contains("config_sha256"))
      os << ", config sha256 " << m["config_sha256"].get<std::string>().substr(0, 12);
    os << "\n";
  } catch (const nlohmann::json::exception&) {
    os << "  model: " << f.model_json << "\n";
  }
  for (const auto& s : f.sources)
    os << "  source: " << s.path << " (" << s.n_tokens << " tokens"
       << (s.sha256.empty() ? "" : ", sha256 " + s.sha256.substr(0, 12)) << ")\n";
  os << "  " << f.n_tokens << " tokens, granularity " << f.granularity << ", "
     << (f.centered ? "centred" : "uncentred (second moment)") << ", rank rule " << f.rank_rule_json
     << "\n";

  // Byte cost of the chosen ranks (K and V only: post-RoPE K is a diagnostic).
  std::int64_t bits = 0;
  for (const auto& b : f.blocks)
    if (b.target != "k_rope")
      bits += (f.granularity == "layer" ? f.n_kv_heads : 1) *
              latent_bits_per_token(static_cast<int>(b.rank), f.latent_bits);
  const double fp16 = 2.0 * f.head_dim * f.n_kv_heads * static_cast<double>(f.layers.size()) *
                      ((f.has_target("k") ? 1 : 0) + (f.has_target("v") ? 1 : 0));
  if (fp16 > 0)
    os << "  latent bytes per token (" << f.latent_bits << "-bit latents): " << fixed(bits / 8.0, 1)
       << " vs fp16 " << fixed(fp16, 0) << " (" << fixed(fp16 / (bits / 8.0), 2) << "x)\n";

  const std::vector<int> probes = probe_ranks(f.head_dim);
  os << "\nExplained variance vs rank (mean over KV heads); spread = lambda_1 / lambda_median\n";
  std::string hdr = pad("layer", 5) + "  " + std::string("target        ");
  for (int r : probes) hdr += pad("r=" + std::to_string(r), 8);
  hdr += pad("rank", 7) + pad("energy", 8) + pad("spread", 10);
  os << hdr << "\n";
  std::vector<double> spread_sum(f.targets.size(), 0.0);
  for (std::int64_t l : f.layers) {
    for (size_t ti = 0; ti < f.targets.size(); ++ti) {
      const std::string& t = f.targets[ti];
      const auto bs = blocks_of(f, t, l);
      if (bs.empty()) continue;
      double rank = 0, energy = 0, spread = 0;
      for (const auto* b : bs) {
        rank += static_cast<double>(b->rank);
        energy += explained_energy(b->eigenvalues, static_cast<int>(b->rank));
        spread += spectrum_spread(b->eigenvalues);
      }
      const double n = static_cast<double>(bs.size());
      spread_sum[ti] += spread / n;
      std::string line = pad(std::to_string(l), 5) + "  " + target_label(t);
      line += std::string(14 - std::string(target_label(t)).size(), ' ');
      for (int r : probes) line += pad(fixed(layer_energy(f, t, l, r), 3), 8);
      line += pad(fixed(rank / n, rank / n == std::floor(rank / n) ? 0 : 1), 7);
      line += pad(fixed(energy / n, 3), 8) + pad(fixed(spread / n, 1), 10);
      os << line << "\n";
    }
  }
  os << "\nSpectrum spread (lambda_1 / lambda_median, mean over layers and heads):";
  for (size_t ti = 0; ti < f.targets.size(); ++ti)
    os << "  " << target_label(f.targets[ti]) << " "
       << fixed(spread_sum[ti] / static_cast<double>(f.layers.size()), 1) << "x";
  os << "\n";
  if (f.has_target("k") && f.has_target("k_rope")) {
    // At k's chosen rank and at the probe ranks: a chosen rank of d says nothing by itself.
    const std::vector<int> probes_k = probe_ranks(f.head_dim);
    os << "\nPre- vs post-RoPE K: energy kept at the same rank (pre / post)\n"
       << pad("layer", 5) << pad("rank", 7) << pad("at rank", 16);
    for (int r : probes_k) os << pad("r=" + std::to_string(r), 16);
    os << "\n";
    std::vector<double> pre_sum(probes_k.size() + 1, 0.0), post_sum(probes_k.size() + 1, 0.0);
    for (std::int64_t l : f.layers) {
      const auto ks = blocks_of(f, "k", l);
      std::vector<double> pre(probes_k.size() + 1, 0.0), post(probes_k.size() + 1, 0.0);
      double rank = 0;
      for (const auto* b : ks) {
        const pca_block* kr = f.find("k_rope", l, b->head);
        rank += static_cast<double>(b->rank);
        for (size_t k = 0; k <= probes_k.size(); ++k) {
          const int r = k == 0 ? static_cast<int>(b->rank) : probes_k[k - 1];
          pre[k] += explained_energy(b->eigenvalues, r);
          post[k] += kr ? explained_energy(kr->eigenvalues, r) : 0;
        }
      }
      const double n = static_cast<double>(ks.size());
      os << pad(std::to_string(l), 5) << pad(fixed(rank / n, 1), 7);
      for (size_t k = 0; k <= probes_k.size(); ++k) {
        pre_sum[k] += pre[k] / n;
        post_sum[k] += post[k] / n;
        os << pad(fixed(pre[k] / n, 3) + " / " + fixed(post[k] / n, 3), 16);
      }
      os << "\n";
    }
    const double nl = static_cast<double>(f.layers.size());
    os << pad("mean", 5) << pad("", 7);
    for (size_t k = 0; k <= probes_k.size(); ++k)
      os << pad(fixed(pre_sum[k] / nl, 3) + " / " + fixed(post_sum[k] / nl, 3), 16);
    os << "\n";
  }
}

std::string pca_svg(const pca_file& f) {
  const int pw = 380, ph = 300, ml = 50, mr = 15, mt = 35, mb = 45;
  const int n_panels = static_cast<int>(f.targets.size());
  const int width = pw * std::max(1, n_panels), height = ph + 20;
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
    << "\" viewBox=\"0 0 " << width << " " << height << "\" font-family=\"sans-serif\" "
    << "font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  const double d = static_cast<double>(f.head_dim);
  for (int pi = 0; pi < n_panels; ++pi) {
    const std::string& t = f.targets[static_cast<size_t>(pi)];
    const int x0 = pi * pw + ml, y0 = mt, w = pw - ml - mr, h = ph - mt - mb;
    auto px = [&](double r) { return x0 + w * r / d; };
    auto py = [&](double e) { return y0 + h * (1 - e); };
    s << "<text x=\"" << x0 + w / 2 << "\" y=\"20\" text-anchor=\"middle\" font-size=\"13\">"
      << target_label(t) << ": explained variance vs rank</text>\n";
    s << "<rect x=\"" << x0 << "\" y=\"" << y0 << "\" width=\"" << w << "\" height=\"" << h
      << "\" fill=\"none\" stroke=\"#444\"/>\n";
    for (int k = 0; k <= 4; ++k) {
      const double e = k / 4.0, r = d * k / 4.0;
      s << "<line x1=\"" << x0 << "\" x2=\"" << x0 + w << "\" y1=\"" << fixed(py(e), 1)
        << "\" y2=\"" << fixed(py(e), 1) << "\" stroke=\"#ddd\"/>\n";
      s << "<text x=\"" << x0 - 5 << "\" y=\"" << fixed(py(e) + 4, 1) << "\" text-anchor=\"end\">"
        << fixed(e, 2) << "</text>\n";
      s << "<text x=\"" << fixed(px(r), 1) << "\" y=\"" << y0 + h + 15
        << "\" text-anchor=\"middle\">" << static_cast<int>(r) << "</text>\n";
    }
    s << "<text x=\"" << x0 + w / 2 << "\" y=\"" << y0 + h + 32
      << "\" text-anchor=\"middle\">rank (one curve per layer; dark = early, light = "
         "late)</text>\n";
    for (std::int64_t l : f.layers) {
      const double frac = f.n_layers > 1 ? static_cast<double>(l) / (f.n_layers - 1) : 0;
      const int base = t == "v" ? 0 : 1;  // V red, K blue
      const int c1 = static_cast<int>(40 + 170 * frac), c2 = static_cast<int>(200 - 60 * frac);
      char color[16];
      if (base == 0)
        std::snprintf(color, sizeof color, "#%02x%02x%02x", c2 + 40 > 255 ? 255 : c2 + 40, c1, c1);
      else
        std::snprintf(color, sizeof color, "#%02x%02x%02x", c1, c1, c2 + 40 > 255 ? 255 : c2 + 40);
      s << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"1.2\" points=\"";
      s << fixed(px(0), 1) << "," << fixed(py(0), 1);
      for (std::int64_t r = 1; r <= f.head_dim; ++r)
        s << " " << fixed(px(static_cast<double>(r)), 1) << ","
          << fixed(py(layer_energy(f, t, l, static_cast<int>(r))), 1);
      s << "\"><title>layer " << l << "</title></polyline>\n";
    }
  }
  s << "</svg>\n";
  return s.str();
}

void write_pca_svg(const pca_file& f, const std::string& path) {
  write_file_atomic(path, pca_svg(f));
}

}  // namespace kvcal
