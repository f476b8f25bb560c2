// Matched byte budgets: the per-layer token budgets of a recipe scaled so that its byte
// accounting (runtime/byte_accounting.h) reaches a target compression ratio at a stated context —
// to compare eviction policies and hybrids "at 4x, 8x, 12x" on equal terms (issue 10's table).
//
// One factor s scales every layer's budget, keeping a pyramid's shape: `retain` r -> min(1, s r),
// `tokens` n -> max(1, round(s n)), per-head budgets likewise, a window policy's `recent` likewise
// (sinks kept). The ratio
// grows as s shrinks; s is found by bisection on account_bytes(recipe(s), context).ratio(), and
// the result is the largest budget whose ratio is >= the target (so at least the target).
//
//   kvcal::budget_match m = kvcal::match_ratio(recipe, 2048, 8.0);
//   m.recipe; m.ratio;   // e.g. 8.03
#pragma once

#include <cstdint>

#include "runtime/preset_recipe.h"

namespace kvcal {

struct budget_match {
  preset_recipe recipe;  // budgets scaled; name gets "@<target>x"
  double scale = 1.0;    // the factor applied to every budget
  double ratio = 0.0;    // account_bytes(recipe, context).ratio()
};

// Throws if no layer has a budget to scale (full / learned-threshold only), or if the target is
// above the ratio at the smallest budgets (1 token, `recent` 1). A target the methods reach while
// keeping every token gives budgets that keep every token.
budget_match match_ratio(const preset_recipe& r, std::int64_t context, double target);

}  // namespace kvcal
