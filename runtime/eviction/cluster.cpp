#include "runtime/eviction/cluster.h"

#include <algorithm>
#include <limits>

#include "kernels/common/error.h"
#include "runtime/kv_codec.h"

namespace kvcal {

centroid_set::centroid_set(page_pool* pool, int d, int page_tokens)
    : d_(d),
      k_(pool, static_cast<std::size_t>(d) * 2, static_cast<std::size_t>(page_tokens)),
      v_(pool, static_cast<std::size_t>(d) * 2, static_cast<std::size_t>(page_tokens)),
      a_(static_cast<std::size_t>(d)),
      b_(static_cast<std::size_t>(d)) {}

void centroid_set::absorb(const float* k_rot, const float* v, std::int64_t position,
                          std::int64_t k) {
  KVCAL_ASSERT(k >= 1, "centroid_set: k must be >= 1");
  if (size() < k) {
    encode_fp16_rows(k_rot, 1, d_, k_.append());
    encode_fp16_rows(v, 1, d_, v_.append());
    count_.push_back(1.0);
    pos_.push_back(position);
    return;
  }
  std::int64_t best = 0;
  double best_d2 = std::numeric_limits<double>::infinity();
  for (std::int64_t c = 0; c < size(); ++c) {
    key(c, a_.data());
    double d2 = 0;
    for (int i = 0; i < d_; ++i) {
      const double e = static_cast<double>(a_[static_cast<std::size_t>(i)]) - k_rot[i];
      d2 += e * e;
    }
    if (d2 < best_d2) {
      best_d2 = d2;
      best = c;
    }
  }
  const std::size_t b = static_cast<std::size_t>(best);
  const double n = count_[b];
  const double w = 1.0 / (n + 1.0);
  key(best, a_.data());
  value(best, b_.data());
  for (int i = 0; i < d_; ++i) {
    const std::size_t u = static_cast<std::size_t>(i);
    a_[u] = static_cast<float>((a_[u] * n + k_rot[i]) * w);
    b_[u] = static_cast<float>((b_[u] * n + v[i]) * w);
  }
  encode_fp16_rows(a_.data(), 1, d_, k_.at(b));
  encode_fp16_rows(b_.data(), 1, d_, v_.at(b));
  count_[b] = n + 1.0;
  pos_[b] = std::max(pos_[b], position);
}

void centroid_set::key(std::int64_t c, float* out) const {
  decode_fp16_rows(k_.at(static_cast<std::size_t>(c)), 1, d_, out);
}

void centroid_set::value(std::int64_t c, float* out) const {
  decode_fp16_rows(v_.at(static_cast<std::size_t>(c)), 1, d_, out);
}

std::size_t centroid_set::bookkeeping_bytes() const {
  return count_.capacity() * sizeof(double) + pos_.capacity() * sizeof(std::int64_t);
}

void centroid_set::clear() {
  k_.clear();
  v_.clear();
  count_.clear();
  pos_.clear();
}

}  // namespace kvcal
