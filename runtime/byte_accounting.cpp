#include "runtime/byte_accounting.h"

#include <algorithm>
#include <cmath>

#include "kernels/common/error.h"

namespace kvcal {

namespace {

constexpr double fp16 = 2.0;      // bytes per fp16 element (also per fp16 scale / zero)
constexpr double position = 4.0;  // int32 index per kept token

// How many tokens of `context` each policy keeps for KV head `head` (its head_budgets entry or
// the layer's budget).
double retained_tokens(const layer_recipe& l, std::size_t head, double L, bool* upper_bound) {
  const token_policy& p = l.policy;
  const token_budget& b = l.budget_of(head);
  double budget = L;
  if (b.kind == budget_kind::tokens) budget = static_cast<double>(b.tokens);
  // Floor: a runtime holding ratio x L tokens keeps whole tokens; at least the newest token.
  if (b.kind == budget_kind::retain) budget = std::max(1.0, std::floor(b.retain * L));
  switch (p.kind) {
    case token_policy_kind::full:
      return L;
    case token_policy_kind::window:
      return std::min(L, static_cast<double>(p.sinks + p.recent));
    case token_policy_kind::learned:
      if (b.kind == budget_kind::none) {
        *upper_bound = true;  // a threshold keeps an unknown number of tokens
        return L;
      }
      return std::min(L, budget);
    default:
      return std::min(L, budget);
  }
}

// Bytes for `c` compressed tokens of one head under method `m`; per-channel leftovers (tokens
// not yet filling a group) are fp16, as in KIVI's residual.
void compressed(const kv_method& m, double c, double d, stream_bytes& s) {
  switch (m.kind) {
    case kv_method_kind::none:
      s.full_precision += c * d * fp16;
      break;
    case kv_method_kind::quant: {
      const auto& q = m.quant;
      const double per_group = q.symmetric ? fp16 : 2 * fp16;
      if (q.axis == quant_axis::per_token) {
        s.codes += c * d * q.bits / 8.0;
        s.scales += c * std::ceil(d / q.group) * per_group;
      } else {
        const double groups = std::floor(c / q.group);
        const double left = c - groups * q.group;
        s.codes += groups * q.group * d * q.bits / 8.0;
        s.scales += groups * d * per_group;
        s.full_precision += left * d * fp16;
      }
      break;
    }
    case kv_method_kind::pca:
    case kv_method_kind::ae: {
      const int rank = m.kind == kv_method_kind::pca ? m.pca.rank : m.ae.latent;
      const int bits = m.kind == kv_method_kind::pca ? m.pca.latent_bits : m.ae.latent_bits;
      s.codes += c * rank * bits / 8.0;
      if (bits < 16) s.scales += c * 2 * fp16;  // per-token asymmetric latent: scale + zero
      break;
    }
  }
}

}  // namespace

double byte_accounting::total() const {
  double t = 0;
  for (const auto& l : layers) t += l.total();
  return t;
}

double byte_accounting::retained_fraction() const {
  if (layers.empty()) return 1.0;
  double s = 0;
  for (const auto& l : layers) s += l.retained;
  return s / (static_cast<double>(layers.size()) * static_cast<double>(context));
}

byte_accounting account_bytes(const preset_recipe& r, std::int64_t context, double fixed_bytes) {
  KVCAL_CHECK(context >= 1, "byte accounting: context ", context, " must be >= 1");
  byte_accounting a;
  a.context = context;
  a.fixed_bytes = fixed_bytes;
  const double L = static_cast<double>(context);
  const double d = static_cast<double>(r.model.head_dim);
  const std::size_t H = static_cast<std::size_t>(r.model.n_kv_heads);
  a.fp16_bytes = L * static_cast<double>(r.model.n_layers) * static_cast<double>(H) * d * fp16 * 2;
  // Adaptive mode: nothing is compressed until the context passes compress_after.
  const bool dormant = r.adaptive.enabled && context <= r.adaptive.compress_after;
  for (const auto& l : r.layers) {
    layer_bytes lb;
    if (dormant) {
      lb.retained = L;
      lb.k.full_precision = lb.v.full_precision = L * d * fp16 * static_cast<double>(H);
      a.layers.push_back(lb);
      continue;
    }
    // Full-precision tokens inside the retained set: sinks + the recent window (KIVI residual or
    // adaptive keep_recent, whichever is longer), then the guard share of the rest.
    const double sinks =
        l.policy.kind == token_policy_kind::window ? static_cast<double>(l.policy.sinks) : 0.0;
    double recent = static_cast<double>(l.residual);
    if (r.adaptive.enabled) recent = std::max(recent, static_cast<double>(r.adaptive.keep_recent));
    for (std::size_t h = 0; h < H; ++h) {  // heads may keep different budgets (head_budgets)
      const double R = retained_tokens(l, h, L, &a.upper_bound);
      lb.retained += R;  // summed here, the mean over heads below
      const double window = std::min(R, sinks + recent);
      const double guard = std::floor(l.guard * (R - window));
      const double comp = R - window - guard;
      // Centroids of evicted tokens (cluster policy): fp16 K and V vectors.
      const double centroids = l.policy.kind == token_policy_kind::cluster
                                   ? std::min(static_cast<double>(l.policy.clusters), L - R)
                                   : 0.0;
      const bool evicts = R < L && l.policy.kind != token_policy_kind::full &&
                          l.policy.kind != token_policy_kind::window;
      for (int kv = 0; kv < 2; ++kv) {
        const kv_method& m = kv == 0 ? l.k_of(h) : l.v_of(h);
        stream_bytes& s = kv == 0 ? lb.k : lb.v;
        s.full_precision += (window + guard + centroids) * d * fp16;
        compressed(m, comp, d, s);
      }
      // Positions are needed to re-apply RoPE to pre-RoPE keys and to keep order; sliding
      // windows and full caches imply them.
      if (evicts) lb.indices += R * position;
    }
    lb.retained /= static_cast<double>(H);
    a.layers.push_back(lb);
  }
  return a;
}

}  // namespace kvcal
