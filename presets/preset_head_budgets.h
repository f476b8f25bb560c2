// `kvcal export --head-budgets entropy|effective --capture cap.h5`: per-KV-head eviction budgets
// (the preset's head_budgets, format version 2) derived from the attention the model really
// spreads, measured on a calibration capture (calibrate/attention_entropy.h).
//
// Each layer whose policy takes a budget (h2o, lru, cluster, learned) keeps its total and splits
// it over its n_kv heads in proportion to a weight w_h of the head's cumulative-attention
// entropy H_h (nats):
//   entropy    w_h = H_h              (mild: heads differ by their entropy's ratio)
//   effective  w_h = exp(H_h)          (the effective number of attended tokens)
// retain r -> r_h = min(1, r n_kv w_h / sum w); tokens n -> n_h = max(1, round(n n_kv w_h / sum
// w)). A head clipped at 1 gives nothing back to the others (the total can only shrink). Layers
// with `full` or `window` are left alone. Run before --match-ratio, which scales every head's
// budget by the same factor (proportions kept).
//
//   kvcal::split_head_budgets(recipe, kvcal::attention_entropy(cap), head_budget_rule::entropy,
//                             "cap.h5");
#pragma once

#include <string>
#include <vector>

#include "calibrate/attention_entropy.h"
#include "runtime/preset_recipe.h"

namespace kvcal {

enum class head_budget_rule { entropy, effective };

// "entropy" | "effective"; throws naming the value otherwise.
head_budget_rule parse_head_budget_rule(const std::string& s);

// The weights of one layer's heads under `rule`.
std::vector<double> head_budget_weights(const std::vector<double>& entropy, head_budget_rule rule);

// Errors name `source` (the capture) and the layer when a layer that needs it was not recorded or
// the capture's KV heads differ from the recipe's.
void split_head_budgets(preset_recipe& r, const head_entropy& e, head_budget_rule rule,
                        const std::string& source);

}  // namespace kvcal
