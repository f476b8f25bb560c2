// Token eviction on the GPU for an fp16 cache whose held rows are UNORDERED (issue 11): per slot
// (sequence b, KV head g) rows [0, held[b]) of the fp16 ring (kernels/cuda/packed_kv.h with
// keys_rotated) hold tokens in any order, with pos[slot, row] (int32 position) and score[slot,
// row] (H2O cumulative attention, kernels/cuda/h2o_score.h) alongside. The rule is the CPU's
// (runtime/eviction/policy.h, select.h, h2o.h, window.h), for the h2o policy (no sinks):
//   R(seen)  = min(seen, max(1, floor(retain x seen)))  (retain > 0)  or  min(seen, max(1, tokens))
//   recent   = min(held, max(min(R, max(1, window)), R - floor(heavy x R)))  newest tokens kept
//   the others ranked by score, highest first, ties to the newer position; the best R - recent
//   are kept;
// and for the window policy (StreamingLLM, sinks > 0 or window_policy): R = min(seen, tokens)
// with tokens = sinks + recent, the oldest min(sinks, R, held) tokens (positions [0, sinks): the
// sequence starts at position 0) and the newest R - min(R, sinks) are kept, nothing by score.
// The recent share is taken as the rows with pos >= seen - recent: the newest held tokens are
// consecutive positions ending at seen - 1 (the recent share never shrinks by more than the one
// token appended per step, so no recent token was evicted before), which is what the CPU keeps.
// Order key of a row: (score, pos) as one uint64 (orderable fp32 bits << 32 | pos): keys are
// unique, the lowest is evicted first.
//
//   launch_evict_one     a decode step: held[b] = R + 1 rows -> drop the lowest-keyed non-recent
//                        row and move the last row into its place (one row moves, not the slot);
//                        the next append writes row R. Nothing happens where held[b] <= R.
//   launch_select_kept   after a prompt: the indices of the R kept rows of held[b] candidate rows
//                        (an exact radix select of the (R - recent)-th largest key), out of place,
//                        so the caller gathers them into rows [0, R) of a smaller ring.
// Graph safe (no allocation, no host reads); one CTA per slot.
//
//   kvcal::evict_one_params e;  e.kv = view;  e.pos = pos;  e.score = score;  e.budget = b; ...
//   kvcal::check_launch(kvcal::launch_evict_one(e, stream), "evict");
#pragma once

#include <cstdint>

#include "kernels/cuda/packed_kv.h"

namespace kvcal {

struct evict_budget {
  double retain = 0.0;  // > 0: R = floor(retain x seen); else `tokens`
  int tokens = 0;
  double heavy = 0.8;  // heavy-hitter share of R; the rest (and at least `window`) is recent
  int window = 0;      // the fp16 recent window of the recipe (residual), at least 1 is recent
  // Window policy: `tokens` = sinks + recent, the oldest `sinks` positions always kept.
  bool window_policy = false;
  int sinks = 0;
};

// The CPU rule (host and device): R and the recent share for `seen` tokens and `held` rows.
KVCAL_HOST_DEVICE inline std::int64_t evict_retained(const evict_budget& b, std::int64_t seen) {
  std::int64_t r = b.tokens;
  if (b.window_policy) return r < seen ? r : seen;
  if (b.retain > 0.0) r = static_cast<std::int64_t>(b.retain * static_cast<double>(seen));
  if (r < 1) r = 1;
  return r < seen ? r : seen;
}
// Oldest tokens kept (window policy): min(sinks, R, held).
KVCAL_HOST_DEVICE inline std::int64_t evict_sinks(const evict_budget& b, std::int64_t R,
                                                  std::int64_t held) {
  if (!b.window_policy) return 0;
  std::int64_t s = b.sinks < R ? b.sinks : R;
  return s < held ? s : held;
}
KVCAL_HOST_DEVICE inline std::int64_t evict_recent(const evict_budget& b, std::int64_t R,
                                                   std::int64_t held) {
  if (b.window_policy) {
    const std::int64_t s = evict_sinks(b, R, held);
    const std::int64_t rec = R - (b.sinks < R ? b.sinks : R);
    return rec < held - s ? rec : held - s;
  }
  const std::int64_t w = b.window > 1 ? b.window : 1;
  const std::int64_t base = R < w ? R : w;
  const std::int64_t share = R - static_cast<std::int64_t>(b.heavy * static_cast<double>(R));
  const std::int64_t rec = base > share ? base : share;
  return rec < held ? rec : held;
}

struct evict_one_params {
  packed_kv_view kv;              // bits 16; k_win / v_win rows are moved; kv.n_tokens unused
  int* pos = nullptr;             // [B, n_kv, kv.win_cap]
  float* score = nullptr;         // [B, n_kv, kv.win_cap]
  const int* held = nullptr;      // [B] rows in use before the step's eviction
  const int* seen = nullptr;      // [B] tokens seen (the newest position + 1)
  int* maybe_held_out = nullptr;  // [B] rows after eviction (min(held, R)); may be null
  evict_budget budget;
};
cudaError_t launch_evict_one(const evict_one_params& p, cudaStream_t stream);

struct select_kept_params {
  int batch = 0, n_kv = 0;
  const float* score = nullptr;    // [B, n_kv, stride] candidates' scores
  const int* maybe_pos = nullptr;  // [B, n_kv, stride] positions; null: row i is position i
  int stride = 0;                  // >= max over b of held[b]
  const int* held = nullptr;       // [B] candidate rows
  const int* seen = nullptr;       // [B] tokens seen
  int* kept = nullptr;             // [B, n_kv, kept_stride] kept row indices (any order)
  int kept_stride = 0;             // >= R of every sequence; rows past R are not written
  evict_budget budget;
};
cudaError_t launch_select_kept(const select_kept_params& p, cudaStream_t stream);

}  // namespace kvcal
