// Semantic clustering of evicted keys (the MLSys 2025 hybrid paper's "clustering K"): tokens are
// chosen as H2O does (cumulative attention, GQA mean), but an evicted token is not lost — it
// merges into one of k centroids per KV head that stay attendable.
//
// Centroids live after RoPE: a pre-RoPE centroid of tokens at different positions has no one
// position to rotate at. Per KV head, centroid c holds (all fp16 in pages, as the byte
// accounting counts them; count and position are bookkeeping):
//   kc  = mean of the rotated keys R_p k_p of its n members   [d]
//   vc  = mean of their values                                 [d]
//   n   = members,  pc = the newest member's position
// An evicted token opens a new centroid while fewer than k exist, else joins the nearest one
// (Euclidean distance between rotated keys) as a running mean weighted by the counts.
// Attention: a query at position p >= pc scores the centroid as n tokens of key kc:
//   s_c = q . kc / sqrt(d) + log(n),   exp(s_c) = n exp(q . kc / sqrt(d))
// and reads vc with the probability of s_c (sliding-window masks do not apply to centroids).
// Mass bound: the members' mass sum_j exp(q . k_j / sqrt(d)) against the centroid's
// n exp(q . kc / sqrt(d)) is >= 1 (Jensen) and <= exp(|q| r / sqrt(d)) for members within a
// distance r of kc (plus fp16 rounding of kc) — tests/test_eviction.cpp checks it.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/eviction/h2o.h"
#include "runtime/kv_store.h"

namespace kvcal {

class cluster_policy : public h2o_policy {
 public:
  using h2o_policy::h2o_policy;
  std::int64_t recent(std::int64_t R) const override { return eviction_policy::recent(R); }
  bool merges() const override { return true; }
  std::int64_t clusters() const { return lr_.policy.clusters; }
};

// The centroids of one KV head.
class centroid_set {
 public:
  centroid_set() = default;
  centroid_set(page_pool* pool, int d, int page_tokens);

  // Merges one evicted token: k_rot [d] its key after RoPE, v [d]; at most `k` centroids.
  void absorb(const float* k_rot, const float* v, std::int64_t position, std::int64_t k);
  std::int64_t size() const { return static_cast<std::int64_t>(count_.size()); }
  // Centroid c: key (after RoPE) and value [d] as stored (fp16), members, newest position.
  void key(std::int64_t c, float* out) const;
  void value(std::int64_t c, float* out) const;
  double count(std::int64_t c) const { return count_[static_cast<std::size_t>(c)]; }
  std::int64_t position(std::int64_t c) const { return pos_[static_cast<std::size_t>(c)]; }
  const paged_array& keys() const { return k_; }
  const paged_array& values() const { return v_; }
  std::size_t bookkeeping_bytes() const;
  void clear();

 private:
  int d_ = 0;
  paged_array k_, v_;          // [centroids, d] fp16
  std::vector<double> count_;  // [centroids]
  std::vector<std::int64_t> pos_;
  std::vector<float> a_, b_;  // scratch [d]
};

}  // namespace kvcal
