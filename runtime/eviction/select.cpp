#include "runtime/eviction/select.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace kvcal {

namespace {

// Indices of `idx` ordered best first: higher score, then newer (higher index).
void rank(std::vector<std::int64_t>& idx, const double* scores) {
  std::sort(idx.begin(), idx.end(), [&](std::int64_t a, std::int64_t b) {
    if (scores[a] != scores[b]) return scores[a] > scores[b];
    return a > b;
  });
}

}  // namespace

std::int64_t select_kept(const eviction_policy& p, const double* scores, std::int64_t n,
                         std::int64_t R, std::uint8_t* keep) {
  const auto thr = p.threshold();
  if (n <= R && !thr) {
    std::fill(keep, keep + n, std::uint8_t{1});
    return n;
  }
  std::fill(keep, keep + n, std::uint8_t{0});
  const std::int64_t sinks = std::min({p.sinks(), R, n});
  const std::int64_t recent = std::min(p.recent(R), n - sinks);
  std::int64_t kept = 0;
  for (std::int64_t i = 0; i < sinks; ++i) keep[i] = 1;
  for (std::int64_t i = n - recent; i < n; ++i) keep[i] = 1;
  kept = sinks + recent;
  std::vector<std::int64_t> rest;
  for (std::int64_t i = sinks; i < n - recent; ++i)
    if (!thr || scores[i] >= *thr) rest.push_back(i);
  rank(rest, scores);
  for (std::int64_t i : rest) {
    if (kept >= R) break;
    keep[i] = 1;
    ++kept;
  }
  return kept;
}

void assign_precision(const double* scores, std::int64_t m, std::int64_t sinks, std::int64_t window,
                      double guard, token_class* cls) {
  const std::int64_t s = std::min(sinks, m);
  const std::int64_t w = std::min(window, m - s);
  const std::int64_t F = s + w;
  const auto G = static_cast<std::int64_t>(std::floor(guard * static_cast<double>(m - F)));
  std::vector<std::int64_t> rest;
  for (std::int64_t i = 0; i < m; ++i) {
    const bool fp16 = i < s || i >= m - w;
    cls[i] = fp16 ? token_class::window : token_class::compressed;
    if (!fp16) rest.push_back(i);
  }
  rank(rest, scores);
  for (std::int64_t g = 0; g < G; ++g) cls[rest[static_cast<std::size_t>(g)]] = token_class::guard;
}

}  // namespace kvcal
