#include "runtime/eviction/evicting_layer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/common/error.h"
#include "kernels/cpu/rope.h"
#include "runtime/compressed_cache.h"
#include "runtime/eviction/learned.h"
#include "runtime/eviction/select.h"

namespace kvcal {

namespace {

std::size_t sz(std::int64_t n) {
  return static_cast<std::size_t>(n);
}

std::int32_t comp_loc(std::int64_t c) {
  return static_cast<std::int32_t>(-(c + 1));
}

}  // namespace

evicting_layer::evicting_layer(const layer_recipe& lr, const evicting_layer_params& p,
                               std::vector<std::unique_ptr<kv_codec>> k_codecs,
                               std::vector<std::unique_ptr<kv_codec>> v_codecs,
                               const std::vector<tensor_view>& tensors, page_pool* pool,
                               const std::string& source)
    : lr_(lr), p_(p), pool_(pool) {
  KVCAL_ASSERT(static_cast<int>(k_codecs.size()) == p.n_kv_heads &&
                   static_cast<int>(v_codecs.size()) == p.n_kv_heads,
               "evicting_layer: one codec per KV head and stream");
  policy_ = make_policy(lr, p.layer, p.window, tensors, p.n_kv_heads, p.head_dim, source);
  KVCAL_CHECK(!policy_->merges() || lr.policy.clusters >= 1, source, ": layers[", p.layer,
              "].policy.cluster.k must be >= 1");
  const std::size_t P = static_cast<std::size_t>(p.page_tokens);
  const std::size_t row = static_cast<std::size_t>(p.head_dim) * 2;
  for (int kv = 0; kv < 2; ++kv) {
    auto& codecs = kv ? v_codecs : k_codecs;
    for (auto& c : codecs) {
      stream_state s;
      const std::size_t block = static_cast<std::size_t>(c->block_tokens());
      s.fp16 = paged_array(pool, row, P);
      s.records = paged_array(pool, c->record_bytes(), std::max<std::size_t>(1, P / block));
      s.codec = std::move(c);
      streams_[kv].push_back(std::move(s));
    }
  }
  for (int h = 0; h < p.n_kv_heads; ++h) {
    head_state hs;
    hs.index = paged_array(pool, sizeof(std::int32_t), P);
    hs.centroids = centroid_set(pool, p.head_dim, p.page_tokens);
    heads_.push_back(std::move(hs));
  }
  int max_block = 1;
  for (const auto& s : streams_[0]) max_block = std::max(max_block, s.codec->block_tokens());
  for (const auto& s : streams_[1]) max_block = std::max(max_block, s.codec->block_tokens());
  block_.resize(sz(max_block) * sz(p.head_dim));
  row_.resize(sz(p.head_dim));
}

std::int64_t evicting_layer::held(int h) const {
  return static_cast<std::int64_t>(heads_[sz(h)].score.size());
}

std::int64_t evicting_layer::max_held() const {
  std::int64_t m = 0;
  for (int h = 0; h < p_.n_kv_heads; ++h) m = std::max(m, held(h));
  return m;
}

std::int64_t evicting_layer::compressed_tokens(int h, bool value) const {
  return streams_[value ? 1 : 0][sz(h)].n_comp;
}

std::int64_t evicting_layer::position(const head_state& hs, std::int64_t i) const {
  if (indexed_) {
    std::int32_t v;
    std::memcpy(&v, hs.index.at(sz(i)), sizeof v);
    return v;
  }
  const auto n = static_cast<std::int64_t>(hs.score.size());
  if (policy_->kind() == token_policy_kind::window) {  // sinks, then consecutive to the newest
    const std::int64_t s = std::min(policy_->sinks(), n);
    return i < s ? p0_ + i : p0_ + seen_ - (n - i);
  }
  return p0_ + i;  // nothing evicted yet
}

std::vector<std::int64_t> evicting_layer::positions(int h) const {
  const head_state& hs = heads_[sz(h)];
  std::vector<std::int64_t> out(hs.score.size());
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = position(hs, static_cast<std::int64_t>(i));
  return out;
}

std::vector<double> evicting_layer::scores(int h) const {
  return heads_[sz(h)].score;
}

std::vector<bool> evicting_layer::stored_fp16(int h, bool value) const {
  const auto& loc = heads_[sz(h)].loc[value ? 1 : 0];
  std::vector<bool> out(loc.size());
  for (std::size_t i = 0; i < loc.size(); ++i) out[i] = loc[i] >= 0;
  return out;
}

const centroid_set& evicting_layer::centroids(int h) const {
  return heads_[sz(h)].centroids;
}

void evicting_layer::append(const float* k_pre, const float* v, const std::int64_t* positions,
                            std::int64_t T, const float* maybe_hidden, std::int64_t hidden_size) {
  if (seen_ == 0) {
    KVCAL_CHECK(positions[0] >= 0, "append: negative position ", positions[0]);
    p0_ = positions[0];
  }
  for (std::int64_t i = 0; i < T; ++i)
    KVCAL_CHECK(positions[i] == p0_ + seen_ + i, "append: layer ", p_.layer, " token ", i,
                " has position ", positions[i], ", expected ", p0_ + seen_ + i,
                " (positions must be consecutive)");
  KVCAL_CHECK(p0_ + seen_ + T <= std::numeric_limits<std::int32_t>::max(),
              "append: positions beyond int32 (the eviction index stores int32)");
  if (maybe_hidden && policy_->kind() == token_policy_kind::learned) {
    const auto* lp = static_cast<const learned_policy*>(policy_.get());
    KVCAL_CHECK(lp->features() != policy_features::hidden || hidden_size == lp->in_dim(),
                "append: layer ", p_.layer, ": hidden state of ", hidden_size,
                " features, the learned policy reads ", lp->in_dim());
  }
  const int H = p_.n_kv_heads, d = p_.head_dim;
  for (std::int64_t i = 0; i < T; ++i) {
    const std::int64_t pos = positions[i];
    for (int h = 0; h < H; ++h) {
      const std::size_t off = (sz(i) * sz(H) + sz(h)) * sz(d);
      head_state& hs = heads_[sz(h)];
      for (int kv = 0; kv < 2; ++kv) {
        stream_state& s = streams_[kv][sz(h)];
        encode_fp16_rows((kv ? v : k_pre) + off, 1, d, s.fp16.append());
        hs.loc[kv].push_back(static_cast<std::int32_t>(s.fp16.size() - 1));
      }
      hs.score.push_back(policy_->on_append(
          h, pos, k_pre + off, maybe_hidden ? maybe_hidden + sz(i) * sz(hidden_size) : nullptr,
          step_));
      if (indexed_) {
        const auto p32 = static_cast<std::int32_t>(pos);
        std::memcpy(hs.index.append(), &p32, sizeof p32);
      }
    }
  }
  seen_ += T;
}

void evicting_layer::row_of(stream_state& s, std::int32_t loc, float* out) {
  const int d = p_.head_dim;
  if (loc >= 0) {
    decode_fp16_rows(s.fp16.at(sz(loc)), 1, d, out);
    return;
  }
  const std::int64_t c = -static_cast<std::int64_t>(loc) - 1;
  const std::int64_t B = s.codec->block_tokens();
  const std::int64_t rec = c / B;
  if (cached_stream_ != &s || cached_rec_ != rec) {
    s.codec->decode(s.records.at(sz(rec)), block_.data());
    cached_stream_ = &s;
    cached_rec_ = rec;
  }
  std::copy_n(block_.data() + sz(c % B) * sz(d), d, out);
}

void evicting_layer::reconstruct(int h, bool value, float* out) {
  KVCAL_CHECK(h >= 0 && h < p_.n_kv_heads, "reconstruct: KV head ", h, " out of range");
  head_state& hs = heads_[sz(h)];
  stream_state& s = streams_[value ? 1 : 0][sz(h)];
  cached_stream_ = nullptr;
  for (std::size_t i = 0; i < hs.score.size(); ++i)
    row_of(s, hs.loc[value ? 1 : 0][i], out + i * sz(p_.head_dim));
}

void evicting_layer::attend(const float* q_rope, const std::int64_t* positions, std::int64_t T,
                            float* out, const float* inv_freq, float attention_scaling) {
  const int d = p_.head_dim;
  const std::size_t D = sz(d);
  rope_inv_freq_ = inv_freq;
  rope_scaling_ = attention_scaling;
  const int rep = p_.n_heads / p_.n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const bool observe = policy_->uses_attention();
  cs_.resize(D / 2);
  sn_.resize(D / 2);
  acc_.resize(D);
  for (int h = 0; h < p_.n_kv_heads; ++h) {
    head_state& hs = heads_[sz(h)];
    const std::int64_t n = held(h);
    const std::int64_t m = hs.centroids.size();
    const std::size_t rows = sz(n + m);
    if (k_.size() < rows * D) k_.resize(rows * D);
    if (v_.size() < rows * D) v_.resize(rows * D);
    if (sc_.size() < rows) sc_.resize(rows);
    if (arow_.size() < sz(n)) arow_.resize(sz(n));
    pos_.resize(sz(n));
    cached_stream_ = nullptr;
    for (std::int64_t i = 0; i < n; ++i) {  // keys rotated at their positions, then values
      pos_[sz(i)] = position(hs, i);
      row_of(streams_[0][sz(h)], hs.loc[0][sz(i)], k_.data() + sz(i) * D);
      rope_cos_sin(pos_[sz(i)], inv_freq, d, attention_scaling, cs_.data(), sn_.data());
      apply_rope(k_.data() + sz(i) * D, d, cs_.data(), sn_.data());
    }
    for (std::int64_t i = 0; i < n; ++i)
      row_of(streams_[1][sz(h)], hs.loc[1][sz(i)], v_.data() + sz(i) * D);
    for (std::int64_t c = 0; c < m; ++c) {  // centroids: after RoPE already
      hs.centroids.key(c, k_.data() + sz(n + c) * D);
      hs.centroids.value(c, v_.data() + sz(n + c) * D);
    }
    for (std::int64_t t = 0; t < T; ++t) {
      const std::int64_t p = positions[t];
      const std::int64_t lo = p_.sliding_window > 0 ? p - p_.sliding_window : -1;
      if (observe) std::fill(arow_.begin(), arow_.begin() + n, 0.0f);
      std::int64_t visible = 0;
      for (std::int64_t i = 0; i < n; ++i) visible += pos_[sz(i)] <= p && pos_[sz(i)] > lo;
      std::int64_t cvis = 0;
      for (std::int64_t c = 0; c < m; ++c) cvis += hs.centroids.position(c) <= p;
      KVCAL_CHECK(visible + cvis > 0, "attend: query position ", p, " sees no held token");
      for (int r = 0; r < rep; ++r) {
        const int qh = h * rep + r;
        const float* q = q_rope + (static_cast<std::int64_t>(qh) * T + t) * d;
        float mx = -std::numeric_limits<float>::infinity();
        for (std::int64_t j = 0; j < n + m; ++j) {
          const bool vis =
              j < n ? pos_[sz(j)] <= p && pos_[sz(j)] > lo : hs.centroids.position(j - n) <= p;
          if (!vis) {
            sc_[sz(j)] = -std::numeric_limits<float>::infinity();
            continue;
          }
          const float* kj = k_.data() + sz(j) * D;
          float dot = 0;
          for (int c = 0; c < d; ++c) dot += q[c] * kj[c];
          sc_[sz(j)] = dot * scale;
          if (j >= n) sc_[sz(j)] += static_cast<float>(std::log(hs.centroids.count(j - n)));
          mx = std::max(mx, sc_[sz(j)]);
        }
        double sum = 0;
        for (std::int64_t j = 0; j < n + m; ++j) {
          sc_[sz(j)] = std::isinf(sc_[sz(j)]) ? 0.0f : std::exp(sc_[sz(j)] - mx);
          sum += sc_[sz(j)];
        }
        const float inv = static_cast<float>(1.0 / sum);
        std::fill(acc_.begin(), acc_.end(), 0.0f);
        for (std::int64_t j = 0; j < n + m; ++j) {
          const float pj = sc_[sz(j)] * inv;
          if (pj == 0.0f) continue;
          const float* vj = v_.data() + sz(j) * D;
          for (int c = 0; c < d; ++c) acc_[sz(c)] += pj * vj[c];
          if (observe && j < n) arow_[sz(j)] += pj / static_cast<float>(rep);
        }
        std::copy(acc_.begin(), acc_.end(), out + (static_cast<std::int64_t>(qh) * T + t) * d);
      }
      if (observe) policy_->observe(arow_.data(), n, visible, step_, hs.score.data());
    }
  }
  ++step_;
  evict();
}

bool evicting_layer::needs_relayout(int h, int kv, const std::vector<std::int64_t>& kept,
                                    const std::vector<std::uint8_t>& fp16_target) const {
  const auto& loc = heads_[sz(h)].loc[kv];
  const std::int64_t B = streams_[kv][sz(h)].codec->block_tokens();
  std::int64_t waiting = 0;
  for (std::size_t j = 0; j < kept.size(); ++j) {
    const bool is_fp16 = loc[sz(kept[j])] >= 0;
    if (fp16_target[j] && !is_fp16) return true;
    if (!fp16_target[j] && is_fp16) ++waiting;
  }
  return waiting >= B;
}

// Rebuilds stream (h, kv) into new pages holding the kept tokens (old indices `kept`, position
// order) at their target precision; new_loc [kept] receives their new places.
void evicting_layer::relayout(int h, int kv, const std::vector<std::int64_t>& kept,
                              const std::vector<std::uint8_t>& fp16_target,
                              std::vector<std::int32_t>& new_loc) {
  stream_state& s = streams_[kv][sz(h)];
  const auto& loc = heads_[sz(h)].loc[kv];
  const int d = p_.head_dim;
  const std::int64_t B = s.codec->block_tokens();
  paged_array nf(pool_, s.fp16.record_bytes(), s.fp16.page_bytes() / s.fp16.record_bytes());
  paged_array nr(pool_, s.records.record_bytes(),
                 s.records.page_bytes() / s.records.record_bytes());
  const std::size_t m = kept.size();
  new_loc.assign(m, 0);
  cached_stream_ = nullptr;
  auto to_fp16 = [&](std::size_t j) {
    const std::int32_t L = loc[sz(kept[j])];
    std::uint8_t* dst = nf.append();
    if (L >= 0) {
      std::memcpy(dst, s.fp16.at(sz(L)), nf.record_bytes());
    } else {
      row_of(s, L, row_.data());
      encode_fp16_rows(row_.data(), 1, d, dst);
      ++reencoded_;
    }
    new_loc[j] = static_cast<std::int32_t>(nf.size() - 1);
  };
  // Old records whose every token stays compressed move whole.
  const std::int64_t old_records = s.n_comp / B;
  std::vector<std::int64_t> members(sz(old_records), 0), moved(sz(old_records), -1);
  for (std::size_t j = 0; j < m; ++j) {
    const std::int32_t L = loc[sz(kept[j])];
    if (!fp16_target[j] && L < 0) ++members[sz((-static_cast<std::int64_t>(L) - 1) / B)];
  }
  for (std::int64_t b = 0; b < old_records; ++b) {
    if (members[sz(b)] != B) continue;
    std::memcpy(nr.append(), s.records.at(sz(b)), nr.record_bytes());
    moved[sz(b)] = static_cast<std::int64_t>(nr.size()) - 1;
  }
  std::vector<std::size_t> waiting;  // compressed class, not in a moved record
  for (std::size_t j = 0; j < m; ++j) {
    const std::int32_t L = loc[sz(kept[j])];
    if (fp16_target[j]) continue;
    if (L < 0) {
      const std::int64_t c = -static_cast<std::int64_t>(L) - 1;
      if (moved[sz(c / B)] >= 0) {
        new_loc[j] = comp_loc(moved[sz(c / B)] * B + c % B);
        continue;
      }
    }
    waiting.push_back(j);
  }
  // New blocks from the waiting tokens in position order; the rest (< B) wait in fp16.
  const std::size_t full = waiting.size() / sz(B) * sz(B);
  std::vector<float> blk(sz(B) * sz(d));
  for (std::size_t g = 0; g < full; g += sz(B)) {
    for (std::size_t i = 0; i < sz(B); ++i) {
      const std::int32_t L = loc[sz(kept[waiting[g + i]])];
      row_of(s, L, blk.data() + i * sz(d));
      reencoded_ += L < 0;
    }
    s.codec->encode(blk.data(), nr.append());
    const std::int64_t rec = static_cast<std::int64_t>(nr.size()) - 1;
    for (std::size_t i = 0; i < sz(B); ++i)
      new_loc[waiting[g + i]] = comp_loc(rec * B + static_cast<std::int64_t>(i));
  }
  for (std::size_t i = full; i < waiting.size(); ++i) to_fp16(waiting[i]);
  for (std::size_t j = 0; j < m; ++j)
    if (fp16_target[j]) to_fp16(j);
  s.n_comp = static_cast<std::int64_t>(nr.size()) * B;
  s.fp16 = std::move(nf);  // the old pages go back to the pool
  s.records = std::move(nr);
  cached_stream_ = nullptr;
}

void evicting_layer::evict() {
  const bool dormant = p_.compress_after >= 0 && seen_ <= p_.compress_after;
  const int H = p_.n_kv_heads, d = p_.head_dim;
  // Pass 1: what each head keeps.
  std::vector<std::vector<std::uint8_t>> keep(sz(H));
  bool evicts = false;
  for (int h = 0; h < H; ++h) {
    const std::int64_t n = held(h);
    keep[sz(h)].assign(sz(n), 1);
    if (!dormant) {
      const std::int64_t R = policy_->retained(seen_, h);  // this head's budget
      const std::int64_t m =
          select_kept(*policy_, heads_[sz(h)].score.data(), n, R, keep[sz(h)].data());
      evicts = evicts || m < n;
    }
  }
  const bool index_now = !indexed_ && evicts && policy_->kind() != token_policy_kind::window &&
                         policy_->kind() != token_policy_kind::full;
  std::vector<std::int64_t> old_pos;
  for (int h = 0; h < H; ++h) {
    head_state& hs = heads_[sz(h)];
    const std::int64_t n = held(h);
    old_pos.resize(sz(n));
    for (std::int64_t i = 0; i < n; ++i) old_pos[sz(i)] = position(hs, i);
    std::vector<std::int64_t> kept;
    std::vector<double> kept_scores;
    for (std::int64_t i = 0; i < n; ++i)
      if (keep[sz(h)][sz(i)]) {
        kept.push_back(i);
        kept_scores.push_back(hs.score[sz(i)]);
      }
    const std::size_t m = kept.size();
    // Evicted tokens merge into the centroids (cluster), read before their pages go.
    if (policy_->merges() && m < sz(n)) {
      std::vector<float> kr(sz(d)), vr(sz(d)), cs(sz(d / 2)), sn(sz(d / 2));
      for (std::int64_t i = 0; i < n; ++i) {
        if (keep[sz(h)][sz(i)]) continue;
        cached_stream_ = nullptr;
        row_of(streams_[0][sz(h)], hs.loc[0][sz(i)], kr.data());
        rope_cos_sin(old_pos[sz(i)], rope_inv_freq_, d, rope_scaling_, cs.data(), sn.data());
        apply_rope(kr.data(), d, cs.data(), sn.data());
        cached_stream_ = nullptr;
        row_of(streams_[1][sz(h)], hs.loc[1][sz(i)], vr.data());
        hs.centroids.absorb(kr.data(), vr.data(), old_pos[sz(i)], lr_.policy.clusters);
      }
    }
    std::vector<token_class> cls(m);
    if (dormant)
      std::fill(cls.begin(), cls.end(), token_class::window);
    else
      assign_precision(kept_scores.data(), static_cast<std::int64_t>(m), policy_->sinks(),
                       p_.window, lr_.guard, cls.data());
    std::vector<std::uint8_t> fp16_target(m);
    for (std::size_t j = 0; j < m; ++j) fp16_target[j] = cls[j] != token_class::compressed;
    for (int kv = 0; kv < 2; ++kv) {
      if (m == sz(n) && !needs_relayout(h, kv, kept, fp16_target)) continue;
      std::vector<std::int32_t> nl;
      relayout(h, kv, kept, fp16_target, nl);
      hs.loc[kv] = std::move(nl);
    }
    if (m < sz(n)) {
      hs.score = std::move(kept_scores);
      for (int kv = 0; kv < 2; ++kv)  // relayout ran for both streams
        KVCAL_ASSERT(hs.loc[kv].size() == m, "evict: token table out of sync");
    }
    if (index_now || (indexed_ && m < sz(n))) {  // rebuild the positions (compacted)
      paged_array ni(pool_, sizeof(std::int32_t), hs.index.page_bytes() / sizeof(std::int32_t));
      for (std::size_t j = 0; j < m; ++j) {
        const auto p32 = static_cast<std::int32_t>(old_pos[sz(kept[j])]);
        std::memcpy(ni.append(), &p32, sizeof p32);
      }
      hs.index = std::move(ni);
    }
  }
  if (index_now) indexed_ = true;
}

void evicting_layer::reserve(std::int64_t max_context, std::int64_t max_step) {
  std::int64_t R = 0;  // the largest head's
  for (int h = 0; h < p_.n_kv_heads; ++h)
    R = std::max(R, std::min(max_context, policy_->retained(max_context, h) + max_step));
  const std::size_t D = sz(p_.head_dim);
  const std::size_t rows = sz(R + lr_.policy.clusters);
  if (k_.size() < rows * D) k_.resize(rows * D);
  if (v_.size() < rows * D) v_.resize(rows * D);
  if (sc_.size() < rows) sc_.resize(rows);
  if (arow_.size() < rows) arow_.resize(rows);
  pos_.reserve(rows);
  for (int h = 0; h < p_.n_kv_heads; ++h) {  // token tables sized to each head's own budget
    const auto Rh = sz(std::min(max_context, policy_->retained(max_context, h) + max_step));
    head_state& hs = heads_[sz(h)];
    hs.score.reserve(Rh);
    hs.loc[0].reserve(Rh);
    hs.loc[1].reserve(Rh);
  }
}

void evicting_layer::reset() {
  for (auto& hs : heads_) {
    hs.score.clear();
    hs.loc[0].clear();
    hs.loc[1].clear();
    hs.index.clear();
    hs.centroids.clear();
  }
  for (auto& streams : streams_)
    for (auto& s : streams) {
      s.fp16.clear();
      s.records.clear();
      s.n_comp = 0;
    }
  seen_ = p0_ = step_ = reencoded_ = 0;
  indexed_ = false;
  cached_stream_ = nullptr;
}

std::size_t evicting_layer::add_stats(method_bytes* compressed, method_bytes& fp16,
                                      method_bytes& index, method_bytes& centroids,
                                      std::size_t& bytes_used, std::size_t& bookkeeping) const {
  std::size_t held_bytes = 0;
  for (int h = 0; h < p_.n_kv_heads; ++h) {
    const head_state& hs = heads_[sz(h)];
    for (int kv = 0; kv < 2; ++kv) {
      const stream_state& s = streams_[kv][sz(h)];
      method_bytes& mb = compressed[static_cast<std::size_t>(s.codec->kind())];
      mb.tokens += s.n_comp;
      mb.bytes_held += s.records.bytes_held();
      mb.bytes_used += s.records.bytes_used();
      fp16.tokens += static_cast<std::int64_t>(s.fp16.size());
      fp16.bytes_held += s.fp16.bytes_held();
      fp16.bytes_used += s.fp16.bytes_used();
      held_bytes += s.records.bytes_held() + s.fp16.bytes_held();
      bytes_used += s.records.bytes_used() + s.fp16.bytes_used();
    }
    index.tokens += static_cast<std::int64_t>(hs.index.size());
    index.bytes_held += hs.index.bytes_held();
    index.bytes_used += hs.index.bytes_used();
    const paged_array* cp[2] = {&hs.centroids.keys(), &hs.centroids.values()};
    centroids.tokens += hs.centroids.size();
    for (const paged_array* a : cp) {
      centroids.bytes_held += a->bytes_held();
      centroids.bytes_used += a->bytes_used();
      held_bytes += a->bytes_held();
      bytes_used += a->bytes_used();
    }
    held_bytes += hs.index.bytes_held();
    bytes_used += hs.index.bytes_used();
    bookkeeping += hs.score.capacity() * sizeof(double) +
                   (hs.loc[0].capacity() + hs.loc[1].capacity()) * sizeof(std::int32_t) +
                   hs.centroids.bookkeeping_bytes();
  }
  return held_bytes;
}

}  // namespace kvcal
