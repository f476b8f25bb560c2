// Which tokens of a KV head stay, and at which precision — the two decisions every policy
// shares (runtime/eviction/policy.h gives the scores and the protected counts).
//
// Keep (n held tokens in position order, R = policy.retained(seen)):
//   protected = the oldest min(sinks, R) and the newest recent(R) tokens
//   the others ranked by score, highest first, ties to the newer token; kept up to R in all.
//   Learned with a threshold: the protected ones and every other token scored >= threshold
//   (then at most R of them by score when a budget is set too).
// Precision of the m kept tokens (the byte accounting's F / G / C, docs/formats/preset.md):
//   F = min(m, sinks + window) fp16: the oldest min(sinks, m) and the newest of the rest
//   G = floor(guard x (m - F)) fp16: the highest-scored of the others (ties to the newer)
//   C = m - F - G: the layer's method for that stream (K or V)
//
//   std::vector<std::uint8_t> keep(n), cls(m);
//   std::int64_t m = kvcal::select_kept(policy, scores, n, R, keep.data());
//   kvcal::assign_precision(kept_scores, m, policy.sinks(), policy.window(), guard, cls.data());
#pragma once

#include <cstdint>

#include "runtime/eviction/policy.h"

namespace kvcal {

enum class token_class : std::uint8_t { window = 0, guard = 1, compressed = 2 };

// scores: [n], keep: [n] (1 = kept). Returns the kept count.
std::int64_t select_kept(const eviction_policy& p, const double* scores, std::int64_t n,
                         std::int64_t R, std::uint8_t* keep);

// scores: [m] of the kept tokens in position order; cls: [m] (token_class values).
void assign_precision(const double* scores, std::int64_t m, std::int64_t sinks, std::int64_t window,
                      double guard, token_class* cls);

}  // namespace kvcal
