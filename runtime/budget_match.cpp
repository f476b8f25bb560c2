#include "runtime/budget_match.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "kernels/common/error.h"
#include "runtime/byte_accounting.h"

namespace kvcal {

namespace {

bool scalable(const layer_recipe& l) {
  return l.budget.kind != budget_kind::none || l.policy.kind == token_policy_kind::window;
}

void scale_budget(token_budget& b, double s) {
  if (b.kind == budget_kind::retain) b.retain = std::min(1.0, s * b.retain);
  if (b.kind == budget_kind::tokens)
    b.tokens = std::max<std::int64_t>(1, std::llround(s * static_cast<double>(b.tokens)));
}

preset_recipe scaled(const preset_recipe& r, double s) {
  preset_recipe o = r;
  for (auto& l : o.layers) {
    scale_budget(l.budget, s);
    for (auto& b : l.head_budgets) scale_budget(b, s);  // the heads keep their proportions
    if (l.policy.kind == token_policy_kind::window)
      l.policy.recent =
          std::max<std::int64_t>(1, std::llround(s * static_cast<double>(l.policy.recent)));
  }
  return o;
}

double ratio_at(const preset_recipe& r, double s, std::int64_t context) {
  return account_bytes(scaled(r, s), context).ratio();
}

}  // namespace

budget_match match_ratio(const preset_recipe& r, std::int64_t context, double target) {
  KVCAL_CHECK(target > 0, "match_ratio: target ratio ", target, " must be > 0");
  KVCAL_CHECK(std::any_of(r.layers.begin(), r.layers.end(), scalable), "match_ratio: recipe '",
              r.name, "' has no token budget to scale (policy full or learned threshold only)");
  budget_match m;
  auto finish = [&](double s) {
    m.scale = s;
    m.recipe = scaled(r, s);
    std::ostringstream name;
    name << r.name << "@" << target << "x";
    m.recipe.name = name.str();
    m.ratio = account_bytes(m.recipe, context).ratio();
    return m;
  };
  // Grow the budgets until the ratio falls below the target; if it never does (the budgets keep
  // the whole context and the methods alone reach the target), keeping everything is the answer.
  double hi = 1.0;
  while (ratio_at(r, hi, context) >= target && hi < 1e9) hi *= 2;
  if (ratio_at(r, hi, context) >= target) return finish(hi);
  double lo = 1e-9;  // every budget at its floor (1 token, recent 1)
  const double max_ratio = ratio_at(r, lo, context);
  KVCAL_CHECK(max_ratio >= target, "match_ratio: recipe '", r.name, "' reaches at most ", max_ratio,
              "x at context ", context, " (the smallest budgets), target ", target, "x");
  // Invariant: ratio(lo) >= target > ratio(hi).
  for (int i = 0; i < 200 && hi / lo > 1 + 1e-12; ++i) {
    const double mid = std::sqrt(lo * hi);
    if (ratio_at(r, mid, context) >= target)
      lo = mid;
    else
      hi = mid;
  }
  return finish(lo);
}

}  // namespace kvcal
