#include "presets/preset_head_budgets.h"

#include <algorithm>
#include <cmath>

#include "kernels/common/error.h"

namespace kvcal {

head_budget_rule parse_head_budget_rule(const std::string& s) {
  if (s == "entropy") return head_budget_rule::entropy;
  if (s == "effective") return head_budget_rule::effective;
  KVCAL_FAIL("--head-budgets: '", s, "' is not one of entropy, effective");
}

std::vector<double> head_budget_weights(const std::vector<double>& entropy, head_budget_rule rule) {
  std::vector<double> w(entropy.size());
  for (std::size_t h = 0; h < w.size(); ++h)
    w[h] = rule == head_budget_rule::entropy ? std::max(0.0, entropy[h]) : std::exp(entropy[h]);
  return w;
}

void split_head_budgets(preset_recipe& r, const head_entropy& e, head_budget_rule rule,
                        const std::string& source) {
  const auto H = static_cast<std::size_t>(r.model.n_kv_heads);
  for (std::size_t l = 0; l < r.layers.size(); ++l) {
    layer_recipe& lr = r.layers[l];
    const auto k = lr.policy.kind;
    if (k == token_policy_kind::full || k == token_policy_kind::window ||
        lr.budget.kind == budget_kind::none)
      continue;
    KVCAL_CHECK(l < e.entropy.size() && !e.entropy[l].empty(), source, ": layer ", l,
                " has no attention statistics (record every layer with --layers all)");
    KVCAL_CHECK(e.entropy[l].size() == H, source, ": layer ", l, ": ", e.entropy[l].size(),
                " KV heads in the capture, ", H, " in the recipe");
    const std::vector<double> w = head_budget_weights(e.entropy[l], rule);
    double sum = 0;
    for (double x : w) sum += x;
    KVCAL_CHECK(sum > 0, source, ": layer ", l, ": zero attention entropy in every head");
    lr.head_budgets.assign(H, lr.budget);
    for (std::size_t h = 0; h < H; ++h) {
      const double share = static_cast<double>(H) * w[h] / sum;  // 1 = an equal split
      token_budget& b = lr.head_budgets[h];
      if (b.kind == budget_kind::retain) b.retain = std::min(1.0, b.retain * share);
      if (b.kind == budget_kind::tokens)
        b.tokens = std::max<std::int64_t>(1, std::llround(double(b.tokens) * share));
    }
  }
}

}  // namespace kvcal
