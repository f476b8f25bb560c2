// `kvcal train-policy`: a learned KV eviction scorer per layer, trained on captures, written as
// policy.safetensors (format "kvcal.policy", docs/formats/policy.md), and evaluated on held-out
// sequences against H2O, recency and random.
//
// Recipes (DESIGN.md §3.5):
//   h2o-label    features = the pre-RoPE key of each KV head (in_dim = head_dim, one network per
//                layer shared by its heads, output column g scores head g); label = 1 when the
//                token's cumulative attention attn_cum is above the median of its sequence (per
//                layer and head); binary cross-entropy; MLP [128, 64] by default.
//   future-attn  KVzap-style: features = the hidden state entering attention (in_dim =
//                hidden_size); target = log(attn_next + 1e-6), the attention mass the token
//                receives from the next W queries (W = the capture's attn_window; --target
//                attn_cum uses the whole rest of the sequence); one output per KV head; MSE;
//                linear or MLP(512) (the default).
// Networks: Linear -> ReLU -> ... -> Linear(n_kv_heads). Inputs are standardised with the
// training mean / std, folded into the first layer when written, so the file takes raw features.
// Each layer keeps its best validation weights; early stopping, a checkpoint (<out>.ckpt) after
// every epoch and `resume` as in train-ae (train/train_loop.h).
//
// Evaluation (held-out sequences, per layer and KV head, keep budgets 50 / 25 / 12.5 %), scorers
// learned, h2o, recency (position), random; the kept tokens are the top-scored candidates:
//   mass    = ground truth summed over the kept tokens / over all candidates
//   recall  = |kept ∩ the truly top candidates by the ground truth| / kept
// Causal (the captures have q and k): eviction at each sequence's midpoint t0; candidates are the
// tokens before t0; the attention is recomputed from q and k (RoPE at the captured positions,
// causal and with the model's sliding window, query heads of a KV group averaged); ground truth =
// the attention a candidate receives from the queries at and after t0; h2o = the attention it
// received before t0 (heavy hitters only, no recent window). Otherwise (no q): whole sequences,
// ground truth = attn_next, h2o = attn_cum, which includes the attention it is judged on (an
// oracle-leaning reference).
//
//   kvcal::policy_train_params p;
//   p.captures = {"cap.h5"}; p.out = "policy.safetensors"; p.recipe = "future-attn";
//   kvcal::policy_train_result r = kvcal::run_train_policy(p);
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "train/train_loop.h"

namespace kvcal {

inline constexpr const char* policy_format_name = "kvcal.policy";
inline constexpr int policy_format_version = 1;

struct policy_train_params : train_loop_params {
  std::string recipe = "future-attn";  // future-attn | h2o-label
  std::string features;                // hidden | key ("" = the recipe's)
  std::string arch;                    // linear | mlp ("" = mlp)
  std::vector<int> hidden;             // hidden widths (empty = the recipe's: [512] / [128, 64])
  std::string target = "attn_next";    // future-attn: attn_next | attn_cum
  // The shared options (train/train_loop.h) keep their defaults; write_report: <stem>.json and
  // <stem>.svg next to out.
};

struct policy_budget_metrics {
  double budget = 0;  // fraction kept
  // mass retained and recall of the true top tokens, per scorer
  double learned_mass = 0, h2o_mass = 0, recency_mass = 0, random_mass = 0;
  double learned_recall = 0, h2o_recall = 0, recency_recall = 0, random_recall = 0;
};

struct policy_train_result : train_result {    // init_val / best_val: mean validation loss
  std::vector<policy_budget_metrics> budgets;  // 0.5, 0.25, 0.125
  std::string features, arch;
  std::vector<int> hidden;
  std::int64_t in_dim = 0;
  bool causal_eval = false;  // midpoint evaluation from q and k (else attention statistics)
};

void validate_policy_params(const policy_train_params& p);
policy_train_result run_train_policy(const policy_train_params& p);
std::string policy_report_table(const policy_train_result& r);

}  // namespace kvcal
