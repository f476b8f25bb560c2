// Token eviction policies of the compressed KV cache (issue 10): the common interface, the
// budget rule and the factory. One policy object per layer; it keeps no per-token state itself —
// the cache holds one score per held token and KV head and hands it to the policy, which sets it
// when the token arrives (on_append) and updates it from the attention the cache computes
// (observe). The cache then keeps, per KV head, the oldest `sinks()` and newest
// `recent(R)` tokens and the highest-scored others up to R = retained(seen) tokens
// (runtime/eviction/select.h), ties going to the newer token.
//
//   policy   score of a held token                           protected tokens
//   full     H2O cumulative attention (ranks the guard only)  all
//   window   its position (ranks the guard)                   sinks + the last R - sinks
//   h2o      cumulative attention, GQA mean (h2o.h)           the last R - floor(heavy R)
//   lru      step it was last attended above uniform (lru.h)  the fp16 window
//   cluster  cumulative attention; evicted tokens merge into centroids (cluster.h)
//   learned  the preset's linear / MLP scorer (learned.h)     the fp16 window
// Every policy also protects the fp16 recent window (max(residual, adaptive keep_recent)) and
// the newest token, within R.
//
//   auto p = kvcal::make_policy(layer_recipe, layer, window, tensors, n_kv, d, "preset");
//   std::int64_t R = p->retained(seen, head);
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/io/safetensors.h"
#include "runtime/preset_recipe.h"

namespace kvcal {

class eviction_policy {
 public:
  // `window`: the layer's fp16 recent window in tokens (max(residual, adaptive keep_recent)).
  eviction_policy(const layer_recipe& lr, std::int64_t window);
  virtual ~eviction_policy() = default;

  token_policy_kind kind() const { return lr_.policy.kind; }
  // Tokens KV head `head` keeps once the layer has seen `seen` tokens: full: seen; window:
  // min(seen, sinks + recent); others: min(seen, max(1, budget)), budget = the head's
  // (head_budgets) or the layer's `tokens` or floor(retain x seen); learned with only a
  // threshold: seen (the threshold decides).
  std::int64_t retained(std::int64_t seen, int head) const;
  // Oldest tokens always kept (window policy's sinks).
  std::int64_t sinks() const;
  // Newest tokens always kept when R are retained: at least the newest token and the fp16
  // window; policies widen it (h2o: its recent share, window: all but the sinks). <= R.
  virtual std::int64_t recent(std::int64_t R) const;
  // Whether observe() needs the attention probabilities (attend() skips the bookkeeping if not).
  virtual bool uses_attention() const { return false; }
  // Evicted tokens merge into centroids (cluster policy).
  virtual bool merges() const { return false; }
  // Learned policy with a threshold: tokens scored below it are evicted.
  virtual std::optional<double> threshold() const { return std::nullopt; }

  // Score of a new token of KV head `head` at `position`: key_pre [d] before RoPE,
  // maybe_hidden [hidden] the hidden state entering attention (null if the model gave none),
  // `step` the layer's attend() count so far.
  virtual double on_append(int head, std::int64_t position, const float* key_pre,
                           const float* maybe_hidden, std::int64_t step) const;
  // One query of one KV head: a[i] = attention probability of held token i, the mean over the
  // query heads of the group (0 where masked), `visible` tokens unmasked. Updates scores[i].
  virtual void observe(const float* a, std::int64_t n, std::int64_t visible, std::int64_t step,
                       double* scores) const;

  const layer_recipe& recipe() const { return lr_; }
  std::int64_t window() const { return window_; }

 protected:
  layer_recipe lr_;
  std::int64_t window_;
};

// The layer's policy (`full` too: it ranks the guard). Learned policies read their weights from
// `tensors` (layers.<l>.policy.*, docs/formats/preset.md).
std::unique_ptr<eviction_policy> make_policy(const layer_recipe& lr, int layer, std::int64_t window,
                                             const std::vector<tensor_view>& tensors,
                                             int n_kv_heads, int head_dim,
                                             const std::string& source);

}  // namespace kvcal
