// Learned eviction (DESIGN.md §3.5): a scorer from the preset gives each token one score per KV
// head when it arrives; the highest-scored tokens are kept up to the budget, or (with a threshold
// and no budget) every token scored below the threshold is evicted. Features:
//   hidden  the hidden state entering attention (after the input RMSNorm), [hidden_size] —
//           KVzap: one forward gives the scores of every KV head; the model passes it to the
//           cache (kv_append::hidden); a token appended without one is refused
//   key     the token's key of that KV head before RoPE, [head_dim]; the scorer's output h is
//           the score of head h
// Scorer (tensors layers.<l>.policy.*, docs/formats/preset.md), x the features:
//   linear  s = W x + b                               W [n_kv, in_dim], b [n_kv]
//   MLP     s = W2 relu(W1 x + b1) + b2               W1 [hidden, in_dim], W2 [n_kv, hidden]
// The score of KV head h is s[h]. Scores never change after arrival.
#pragma once

#include <vector>

#include "runtime/eviction/policy.h"

namespace kvcal {

class learned_policy : public eviction_policy {
 public:
  learned_policy(const layer_recipe& lr, std::int64_t window, int layer,
                 const std::vector<tensor_view>& tensors, int n_kv_heads, int head_dim,
                 const std::string& source);
  std::optional<double> threshold() const override { return lr_.policy.learned.threshold; }
  double on_append(int head, std::int64_t position, const float* key_pre, const float* maybe_hidden,
                   std::int64_t step) const override;
  // s[head] for features x [in_dim].
  double score(int head, const float* x) const;
  policy_features features() const { return lr_.policy.learned.features; }
  std::int64_t in_dim() const { return in_dim_; }

 private:
  int n_kv_;
  std::int64_t in_dim_, hidden_;
  std::vector<float> w1_, b1_, w2_, b2_;  // linear: w1_ [n_kv, in_dim], b1_ [n_kv]
  mutable std::vector<float> h_;          // MLP scratch [hidden]
};

}  // namespace kvcal
