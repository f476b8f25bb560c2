// GPU token eviction for fp16 caches (issue 11) against independent CPU references (label gpu;
// skips with a message and passes when the machine has no GPU):
//   keys_rotated + logits  decode attention over an fp16 ring of keys after RoPE (no tables),
//                          the smem-tile kernel and the register-direct one (register_direct):
//                          output vs a dense double-precision reference within 2e-3 (values in
//                          [-1, 1], P rounded to fp16 for P V as in the fp16 baseline); logits
//                          (log2 units) within 1e-2 of q . k * scale * log2(e) (q rounded to fp16
//                          by the kernel: <= d * |q| |k| * scale * log2(e) * 2^-11); the
//                          probabilities exp2(logit - max) / sum from logits + row_stats sum to 1
//                          within 1e-4 and match the reference's within 1.5% relative + 1e-6;
//                          tokens >= n_tokens and null outputs are untouched / cost nothing;
//                          register-direct vs the smem-tile kernel: logits / max 1e-3, row sum
//                          2e-3 relative, output 1e-3
//   h2o_accumulate         vs the formula in double (1e-6 + 1e-5 relative)
//   evict_one, select_kept the set of kept positions equals kvcal::select_kept of the CPU runtime
//                          (runtime/eviction/select.h with an h2o / window policy) over awkward
//                          shapes (slots 1..12, held 17..4099) with heavy score ties; every kept
//                          row keeps its K / V bytes, position and score
#include <cuda_runtime.h>
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "kernels/common/cuda_device.h"
#include "kernels/common/half.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/evict.h"
#include "kernels/cuda/h2o_score.h"
#include "runtime/eviction/policy.h"
#include "runtime/eviction/select.h"
#include "tests/gpu_test_util.h"

using namespace kvcal;
using kvcal::test::dbuf;
using kvcal::test::run_decode_attention;

namespace {

std::size_t sz(std::int64_t x) {
  return static_cast<std::size_t>(x);
}

// An fp16 ring [B, n_kv, cap, d] of keys k and values v (device), no records, as the kernels'
// view; the caller sets the counters.
packed_kv_view fp16_ring(int B, int n_kv, int d, std::uint16_t* k, std::uint16_t* v, int cap) {
  packed_kv_view kv;
  kv.batch = B;
  kv.n_kv = n_kv;
  kv.head_dim = d;
  kv.k_bits = kv.v_bits = 16;
  kv.k_win = reinterpret_cast<__half*>(k);
  kv.v_win = reinterpret_cast<__half*>(v);
  kv.win_cap = cap;
  return kv;
}

// ---- decode attention over keys after RoPE, with logits / row_stats --------------------------

struct rotated_result {
  std::vector<float> out, logits, stats;
};

rotated_result run_rotated(const std::vector<std::uint16_t>& k, const std::vector<std::uint16_t>& v,
                           const std::vector<int>& n, const std::vector<float>& q, int B, int n_kv,
                           int n_heads, int d, int cap, bool with_scores, bool register_direct) {
  dbuf<std::uint16_t> dk(k), dv(v);
  dbuf<int> dn(n);
  dbuf<float> dq(q), dout(q.size());
  const std::size_t nl = sz(B) * sz(n_heads) * sz(cap);
  std::vector<float> nan_fill(nl, std::nanf(""));
  dbuf<float> dlog(nan_fill), dstats(sz(B) * sz(n_heads) * 2);
  decode_attention_params p;
  p.kv = fp16_ring(B, n_kv, d, dk.p, dv.p, cap);
  p.kv.n_tokens = dn.p;
  p.kv.keys_rotated = true;
  p.n_heads = n_heads;
  p.q = dq.p;
  p.max_tokens = cap;
  p.out = dout.p;
  p.register_direct = register_direct;
  if (with_scores) {
    p.logits = dlog.p;
    p.row_stats = dstats.p;
  }
  run_decode_attention(p);
  return {dout.download(), dlog.download(), dstats.download()};
}

// Returns the rotated_result of the run with scores (for the comparison of the two kernels).
rotated_result check_rotated(std::mt19937& rng, int B, int n_kv, int G, int d,
                             const std::vector<int>& n, bool register_direct) {
  const int n_heads = n_kv * G;
  const int cap = *std::max_element(n.begin(), n.end()) + 5;
  const std::size_t D = sz(d);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<std::uint16_t> k(sz(B) * sz(n_kv) * sz(cap) * D), v(k.size());
  for (auto& x : k) x = float_to_fp16(u(rng));
  for (auto& x : v) x = float_to_fp16(u(rng));
  std::vector<float> q(sz(B) * sz(n_heads) * D);
  for (auto& x : q) x = 1.5f * u(rng);
  const rotated_result r = run_rotated(k, v, n, q, B, n_kv, n_heads, d, cap, true, register_direct);
  const rotated_result r0 =
      run_rotated(k, v, n, q, B, n_kv, n_heads, d, cap, false, register_direct);
  CHECK(std::memcmp(r.out.data(), r0.out.data(), r.out.size() * sizeof(float)) == 0);
  const double qscale = 1.0 / std::sqrt(static_cast<double>(d)) * 1.4426950408889634;
  float out_err = 0, logit_err = 0, p_err = 0, sum_err = 0;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < n_heads; ++h) {
      const int g = h / G, N = n[sz(b)];
      const std::size_t slot = sz(b) * sz(n_kv) + sz(g), bh = sz(b) * sz(n_heads) + sz(h);
      std::vector<double> lg(sz(N));
      double mx = -1e300;
      for (int t = 0; t < N; ++t) {
        double dot = 0;
        for (int c = 0; c < d; ++c)
          dot += static_cast<double>(q[bh * D + sz(c)]) *
                 fp16_to_float(k[(slot * sz(cap) + sz(t)) * D + sz(c)]);
        lg[sz(t)] = dot * qscale;
        mx = std::max(mx, lg[sz(t)]);
      }
      double sum = 0;
      for (int t = 0; t < N; ++t) sum += std::exp2(lg[sz(t)] - mx);
      const float gm = r.stats[2 * bh], gs = r.stats[2 * bh + 1];
      double gsum = 0;
      std::vector<double> o(D, 0.0);
      for (int t = 0; t < N; ++t) {
        const double pr = std::exp2(lg[sz(t)] - mx) / sum;
        const float gl = r.logits[bh * sz(cap) + sz(t)];
        REQUIRE(std::isfinite(gl));
        logit_err = std::max(logit_err, static_cast<float>(std::fabs(gl - lg[sz(t)])));
        const double gp = std::exp2(static_cast<double>(gl) - gm) / gs;
        gsum += gp;
        p_err = std::max(p_err, static_cast<float>(std::fabs(gp - pr) / (pr + 1e-6 / 1.5e-2)));
        for (int c = 0; c < d; ++c)
          o[sz(c)] += pr * fp16_to_float(v[(slot * sz(cap) + sz(t)) * D + sz(c)]);
      }
      sum_err = std::max(sum_err, static_cast<float>(std::fabs(gsum - 1.0)));
      for (int t = N; t < cap; ++t) CHECK(std::isnan(r.logits[bh * sz(cap) + sz(t)]));
      for (int c = 0; c < d; ++c)
        out_err =
            std::max(out_err, static_cast<float>(std::fabs(r.out[bh * D + sz(c)] - o[sz(c)])));
    }
  INFO("B ", B, " n_kv ", n_kv, " G ", G, " d ", d, " register_direct ", register_direct);
  CHECK(out_err <= 2e-3f);
  CHECK(logit_err <= 1e-2f);
  CHECK(sum_err <= 1e-4f);
  CHECK(p_err <= 1.5e-2f);  // |gp - p| <= 1.5e-2 * p + 1e-6
  return r;
}

// Same inputs (same seed) through the register-direct kernel and the smem-tile kernel: the fp16
// queries and keys are the same values and both accumulate in fp32, only in another order, so
// the logits differ by fp32 rounding of a 128-term dot product (|logit| < 30: ~1e-5; bound 1e-3);
// the row max likewise, the row sum relatively (2e-3); the output by at most ~5e-4 (P rounded to
// fp16 from logits that differ in the last bits, |v| <= 1; bound 1e-3). Tokens >= n_tokens stay
// NaN in both. A misplaced token or head moves logits by O(1).
void compare_rotated(int B, int n_kv, int G, int d, const std::vector<int>& n, unsigned seed) {
  std::mt19937 ra(seed), rb(seed);
  const rotated_result a = check_rotated(ra, B, n_kv, G, d, n, false);
  const rotated_result b = check_rotated(rb, B, n_kv, G, d, n, true);
  REQUIRE(a.logits.size() == b.logits.size());
  float dl = 0, dm = 0, ds = 0, dout = 0;
  for (std::size_t i = 0; i < a.logits.size(); ++i) {
    CHECK(std::isnan(a.logits[i]) == std::isnan(b.logits[i]));
    if (!std::isnan(a.logits[i])) dl = std::max(dl, std::fabs(a.logits[i] - b.logits[i]));
  }
  for (std::size_t i = 0; i < a.stats.size(); i += 2) {
    dm = std::max(dm, std::fabs(a.stats[i] - b.stats[i]));
    ds = std::max(ds, std::fabs(a.stats[i + 1] - b.stats[i + 1]) / a.stats[i + 1]);
  }
  for (std::size_t i = 0; i < a.out.size(); ++i)
    dout = std::max(dout, std::fabs(a.out[i] - b.out[i]));
  INFO("B ", B, " n_kv ", n_kv, " G ", G, " d ", d);
  CHECK(dl <= 1e-3f);
  CHECK(dm <= 1e-3f);
  CHECK(ds <= 2e-3f);
  CHECK(dout <= 1e-3f);
  MESSAGE("keys_rotated, register-direct vs smem-tile kernel: logits ", dl, ", max ", dm,
          ", sum (rel) ", ds, ", out ", dout);
}

}  // namespace

TEST_CASE("decode attention, keys after RoPE: output, logits and row_stats vs dense reference") {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(11);
  // register_direct: d 128 runs the register-direct kernel (8 heads per CTA), d 64 falls back.
  for (bool rd : {false, true})
    for (int d : {64, 128}) {
      check_rotated(rng, 1, 1, 1, d, {17}, rd);
      check_rotated(rng, 3, 2, 7, d, {300, 1, 97}, rd);
      check_rotated(rng, 2, 4, 20, d, {4099, 2051}, rd);  // 20 query heads: several head groups
    }
}

TEST_CASE(
    "decode attention, keys after RoPE: register-direct logits / row_stats vs the old kernel") {
  SKIP_WITHOUT_GPU();
  compare_rotated(1, 1, 1, 128, {17}, 31);
  compare_rotated(3, 2, 7, 128, {300, 1, 97}, 32);
  compare_rotated(2, 4, 20, 128, {4099, 2051}, 33);
  compare_rotated(2, 2, 9, 128, {64, 33}, 34);  // 9 heads: a partial second 8-head group
}

namespace {

// ---- H2O accumulation ----------------------------------------------------------------------

void check_accumulate(std::mt19937& rng, int B, int n_kv, int G, const std::vector<int>& held,
                      int cap) {
  const int H = n_kv * G, stride = cap + 3;
  std::uniform_real_distribution<float> u(-6.0f, 6.0f), s0(0.0f, 3.0f);
  std::vector<float> logits(sz(B) * sz(H) * sz(cap)), stats(sz(B) * sz(H) * 2);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const std::size_t bh = sz(b) * sz(H) + sz(h);
      float mx = -INFINITY;
      for (int t = 0; t < cap; ++t) {
        logits[bh * sz(cap) + sz(t)] = u(rng);
        if (t < held[sz(b)]) mx = std::max(mx, logits[bh * sz(cap) + sz(t)]);
      }
      double sum = 0;
      for (int t = 0; t < held[sz(b)]; ++t) sum += std::exp2(logits[bh * sz(cap) + sz(t)] - mx);
      stats[2 * bh] = mx;
      stats[2 * bh + 1] = static_cast<float>(sum);
    }
  std::vector<float> score(sz(B) * sz(n_kv) * sz(stride));
  for (auto& x : score) x = s0(rng);
  dbuf<float> dl(logits), ds(stats), dsc(score);
  dbuf<int> dh(held);
  h2o_accumulate_params p;
  p.batch = B;
  p.n_kv = n_kv;
  p.n_heads = H;
  p.max_tokens = cap;
  p.logits = dl.p;
  p.row_stats = ds.p;
  p.held = dh.p;
  p.score = dsc.p;
  p.score_stride = stride;
  CUDA_OK(launch_h2o_accumulate(p, nullptr));
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const std::vector<float> got = dsc.download();
  float err = 0;
  for (int b = 0; b < B; ++b)
    for (int g = 0; g < n_kv; ++g)
      for (int t = 0; t < stride; ++t) {
        const std::size_t at = (sz(b) * sz(n_kv) + sz(g)) * sz(stride) + sz(t);
        if (t >= held[sz(b)]) {
          CHECK(got[at] == score[at]);  // untouched
          continue;
        }
        double add = 0;
        for (int r = 0; r < G; ++r) {
          const std::size_t bh = sz(b) * sz(H) + sz(g) * sz(G) + sz(r);
          add += std::exp2(static_cast<double>(logits[bh * sz(cap) + sz(t)]) - stats[2 * bh]) /
                 stats[2 * bh + 1];
        }
        const double ref = score[at] + add / G;
        err = std::max(err, static_cast<float>(std::fabs(got[at] - ref) / (1e-1 + std::fabs(ref))));
      }
  CHECK(err <= 1e-5f);
}

}  // namespace

TEST_CASE("h2o_accumulate: the group-mean probabilities added to held rows only") {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(12);
  check_accumulate(rng, 1, 1, 1, {17}, 17);
  check_accumulate(rng, 3, 4, 7, {97, 1, 300}, 301);
  check_accumulate(rng, 2, 2, 16, {4099, 2000}, 4100);
}

namespace {

// ---- eviction choice ---------------------------------------------------------------------

struct evict_state {
  int B = 1, n_kv = 1, d = 64, cap = 0;
  std::vector<int> held, seen;
  std::vector<int> pos;             // [B, n_kv, cap]
  std::vector<float> score;         // [B, n_kv, cap]
  std::vector<std::uint16_t> k, v;  // [B, n_kv, cap, d]
};

// Rows in random order: the newest `consec` positions of each slot are seen - consec .. seen - 1
// (the GPU rule's invariant), positions 0 .. sinks - 1 (never evicted), the others distinct
// positions in between. Scores take 6 values: ties.
evict_state make_state(std::mt19937& rng, int B, int n_kv, int d, const std::vector<int>& held,
                       const std::vector<int>& seen, int consec, int sinks = 0) {
  evict_state s;
  s.B = B;
  s.n_kv = n_kv;
  s.d = d;
  s.held = held;
  s.seen = seen;
  s.cap = *std::max_element(held.begin(), held.end()) + 3;
  const std::size_t slots = sz(B) * sz(n_kv), D = sz(d);
  s.pos.assign(slots * sz(s.cap), -1);
  s.score.assign(slots * sz(s.cap), -1.0f);
  s.k.resize(slots * sz(s.cap) * D);
  s.v.resize(s.k.size());
  std::uniform_int_distribution<int> bits(0, 0x7bff), tie(0, 5);
  for (auto& x : s.k) x = static_cast<std::uint16_t>(bits(rng));
  for (auto& x : s.v) x = static_cast<std::uint16_t>(bits(rng));
  for (int b = 0; b < B; ++b)
    for (int g = 0; g < n_kv; ++g) {
      const int n = held[sz(b)], sn = seen[sz(b)], c = std::min(consec, n);
      const int s0 = std::min(sinks, n - c);
      std::vector<int> ps;
      for (int i = 0; i < c; ++i) ps.push_back(sn - c + i);
      for (int i = 0; i < s0; ++i) ps.push_back(i);
      std::vector<int> older(sz(sn - c - s0));
      std::iota(older.begin(), older.end(), s0);
      std::shuffle(older.begin(), older.end(), rng);
      for (int i = 0; i < n - c - s0; ++i) ps.push_back(older[sz(i)]);
      std::shuffle(ps.begin(), ps.end(), rng);
      const std::size_t slot = sz(b) * sz(n_kv) + sz(g);
      for (int i = 0; i < n; ++i) {
        s.pos[slot * sz(s.cap) + sz(i)] = ps[sz(i)];
        s.score[slot * sz(s.cap) + sz(i)] = 0.25f * static_cast<float>(tie(rng));
      }
    }
  return s;
}

// The CPU runtime's choice: positions kept by kvcal::select_kept (h2o or window policy) for one
// slot.
std::set<int> cpu_kept(const evict_state& s, int b, int g, const evict_budget& bud) {
  layer_recipe lr;
  lr.policy.kind = bud.window_policy ? token_policy_kind::window : token_policy_kind::h2o;
  lr.policy.sinks = bud.sinks;
  lr.policy.recent = bud.tokens - bud.sinks;
  lr.policy.heavy = bud.heavy;
  lr.policy.recent_fraction = 1.0 - bud.heavy;
  lr.residual = bud.window;
  if (bud.retain > 0) {
    lr.budget.kind = budget_kind::retain;
    lr.budget.retain = bud.retain;
  } else {
    lr.budget.kind = budget_kind::tokens;
    lr.budget.tokens = bud.tokens;
  }
  const auto pol = make_policy(lr, 0, bud.window, {}, s.n_kv, s.d, "test");
  const std::size_t slot = sz(b) * sz(s.n_kv) + sz(g);
  const int n = s.held[sz(b)];
  std::vector<std::pair<int, double>> rows;  // position order
  for (int i = 0; i < n; ++i)
    rows.push_back({s.pos[slot * sz(s.cap) + sz(i)], s.score[slot * sz(s.cap) + sz(i)]});
  std::sort(rows.begin(), rows.end());
  std::vector<double> sc;
  for (const auto& r : rows) sc.push_back(r.second);
  std::vector<std::uint8_t> keep(sz(n));
  const std::int64_t R = pol->retained(s.seen[sz(b)], 0);
  select_kept(*pol, sc.data(), n, R, keep.data());
  std::set<int> out;
  for (int i = 0; i < n; ++i)
    if (keep[sz(i)]) out.insert(rows[sz(i)].first);
  return out;
}

// Original row of each position in a slot.
std::map<int, int> row_of_pos(const evict_state& s, std::size_t slot, int n) {
  std::map<int, int> m;
  for (int i = 0; i < n; ++i) m[s.pos[slot * sz(s.cap) + sz(i)]] = i;
  return m;
}

void check_evict_one(std::mt19937& rng, int B, int n_kv, int d, const std::vector<int>& held,
                     const std::vector<int>& seen, int consec, const evict_budget& bud) {
  const evict_state s = make_state(rng, B, n_kv, d, held, seen, consec, bud.sinks);
  dbuf<std::uint16_t> dk(s.k), dv(s.v);
  dbuf<int> dpos(s.pos), dheld(s.held), dseen(s.seen), dout(sz(B));
  dbuf<float> dscore(s.score);
  evict_one_params p;
  p.kv = fp16_ring(B, n_kv, d, dk.p, dv.p, s.cap);
  p.pos = dpos.p;
  p.score = dscore.p;
  p.held = dheld.p;
  p.seen = dseen.p;
  p.maybe_held_out = dout.p;
  p.budget = bud;
  CUDA_OK(launch_evict_one(p, nullptr));
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const auto k = dk.download(), v = dv.download();
  const auto pos = dpos.download();
  const auto score = dscore.download();
  const auto hout = dout.download();
  const std::size_t D = sz(d);
  for (int b = 0; b < B; ++b) {
    const int n = held[sz(b)];
    const auto R = evict_retained(bud, seen[sz(b)]);
    const int m = static_cast<int>(std::min<std::int64_t>(n, R));
    CHECK(hout[sz(b)] == m);
    for (int g = 0; g < n_kv; ++g) {
      INFO("b ", b, " g ", g, " held ", n, " seen ", seen[sz(b)], " R ", R);
      const std::size_t slot = sz(b) * sz(n_kv) + sz(g);
      const std::set<int> want = cpu_kept(s, b, g, bud);
      const auto orig = row_of_pos(s, slot, n);
      std::set<int> got;
      for (int i = 0; i < m; ++i) {
        const std::size_t at = slot * sz(s.cap) + sz(i);
        got.insert(pos[at]);
        REQUIRE(orig.count(pos[at]) == 1);
        const std::size_t from = slot * sz(s.cap) + sz(orig.at(pos[at]));
        CHECK(score[at] == s.score[from]);
        CHECK(std::memcmp(&k[at * D], &s.k[from * D], D * 2) == 0);
        CHECK(std::memcmp(&v[at * D], &s.v[from * D], D * 2) == 0);
      }
      CHECK(got.size() == sz(m));
      CHECK(got == want);
    }
  }
}

}  // namespace

TEST_CASE("evict_one: the kept positions are the CPU runtime's, rows move intact") {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(13);
  evict_budget b;
  b.heavy = 0.8;
  // A decode step: held = R + 1 (tokens budget), recent share of 20%.
  for (int n : {17, 98, 1025, 4099}) {
    b.tokens = n - 1;
    b.retain = 0.0;
    check_evict_one(rng, 1, 1, 64, {n}, {n + 500}, n / 4, b);
    check_evict_one(rng, 3, 4, 128, {n, n, n}, {n, n + 1, 3 * n}, n / 4 + 2, b);
  }
  // Several rows at once (held = R + 7), no eviction (held <= R), heavy 0 / 0.5 / 1, window 16.
  for (double heavy : {0.0, 0.5, 1.0}) {
    b.heavy = heavy;
    b.window = heavy == 0.5 ? 16 : 0;
    b.tokens = 90;
    check_evict_one(rng, 2, 6, 64, {97, 90}, {400, 90}, 100, b);
  }
  // The h2o template: retain 1/8 of the tokens seen, held = R + 1.
  b = evict_budget{};
  b.retain = 0.125;
  b.heavy = 0.8;
  check_evict_one(rng, 4, 3, 128, {513, 100, 17, 4099}, {8 * 512 + 3, 8 * 99, 8 * 16 + 7, 8 * 4098},
                  1100, b);
  // Window policy (StreamingLLM): sinks + the newest; one row (a step) or three at once.
  b = evict_budget{};
  b.window_policy = true;
  for (int sinks : {0, 4, 20}) {
    b.sinks = sinks;
    b.tokens = sinks + 60;
    check_evict_one(rng, 2, 5, 64, {b.tokens + 1, b.tokens + 3}, {500, 90}, 60, b);
  }
}

namespace {

void check_select(std::mt19937& rng, int B, int n_kv, const std::vector<int>& held,
                  const std::vector<int>& seen, bool with_pos, const evict_budget& bud) {
  // Prompt layout: row i is position i (maybe_pos null), or shuffled rows with positions.
  evict_state s = make_state(rng, B, n_kv, 8, held, seen, 1 << 30);
  if (!with_pos)
    for (int b = 0; b < B; ++b)
      for (int g = 0; g < n_kv; ++g)
        for (int i = 0; i < held[sz(b)]; ++i)
          s.pos[(sz(b) * sz(n_kv) + sz(g)) * sz(s.cap) + sz(i)] = i;
  std::int64_t kmax = 1;
  for (int b = 0; b < B; ++b) kmax = std::max(kmax, evict_retained(bud, seen[sz(b)]));
  dbuf<float> dscore(s.score);
  dbuf<int> dpos(s.pos), dheld(s.held), dseen(s.seen), dkept(sz(B) * sz(n_kv) * sz(kmax));
  select_kept_params p;
  p.batch = B;
  p.n_kv = n_kv;
  p.score = dscore.p;
  p.maybe_pos = with_pos ? dpos.p : nullptr;
  p.stride = s.cap;
  p.held = dheld.p;
  p.seen = dseen.p;
  p.kept = dkept.p;
  p.kept_stride = static_cast<int>(kmax);
  p.budget = bud;
  CUDA_OK(launch_select_kept(p, nullptr));
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const auto kept = dkept.download();
  for (int b = 0; b < B; ++b) {
    const int m =
        static_cast<int>(std::min<std::int64_t>(held[sz(b)], evict_retained(bud, seen[sz(b)])));
    for (int g = 0; g < n_kv; ++g) {
      INFO("b ", b, " g ", g, " held ", held[sz(b)], " seen ", seen[sz(b)]);
      const std::size_t slot = sz(b) * sz(n_kv) + sz(g);
      std::set<int> rows, got;
      for (int i = 0; i < m; ++i) {
        const int r = kept[slot * sz(kmax) + sz(i)];
        REQUIRE((r >= 0 && r < held[sz(b)]));
        rows.insert(r);
        got.insert(s.pos[slot * sz(s.cap) + sz(r)]);
      }
      CHECK(rows.size() == sz(m));  // no duplicates
      CHECK(got == cpu_kept(s, b, g, bud));
    }
  }
}

}  // namespace

TEST_CASE("select_kept: the prompt's kept rows are the CPU runtime's (radix top-k, ties)") {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(14);
  evict_budget b;
  b.retain = 0.125;
  b.heavy = 0.8;
  check_select(rng, 1, 1, {17}, {17}, false, b);
  check_select(rng, 3, 4, {4099, 1000, 33}, {4099, 1000, 33}, false, b);
  check_select(rng, 2, 6, {2048, 7}, {2048, 7}, false, b);  // 7: R = 1 (at least one kept)
  b.retain = 0.0;
  b.tokens = 300;
  for (double heavy : {0.0, 0.5, 1.0}) {
    b.heavy = heavy;
    check_select(rng, 2, 3, {1000, 301}, {1000, 301}, false, b);
  }
  // Rows in any order with positions (a full set of positions: every one in [0, seen)).
  b.heavy = 0.8;
  check_select(rng, 3, 2, {1500, 17, 4099}, {1500, 17, 4099}, true, b);
  // Window policy: the sinks and the newest of a prompt, nothing by score.
  b = evict_budget{};
  b.window_policy = true;
  b.sinks = 4;
  b.tokens = 4 + 1020;
  check_select(rng, 2, 3, {4099, 600}, {4099, 600}, false, b);
  check_select(rng, 1, 2, {2000}, {2000}, true, b);
}

TEST_CASE("eviction launchers refuse bad input with a message") {
  SKIP_WITHOUT_GPU();
  evict_one_params p;
  p.kv.batch = 1;
  p.kv.n_kv = 1;
  p.kv.head_dim = 64;
  p.kv.k_bits = p.kv.v_bits = 4;
  p.kv.win_cap = 8;
  CHECK(launch_evict_one(p, nullptr) == cudaErrorInvalidValue);
  CHECK(last_launch_error().find("fp16") != std::string::npos);
  select_kept_params s;
  CHECK(launch_select_kept(s, nullptr) == cudaErrorInvalidValue);
  decode_attention_params a;
  a.kv.batch = 1;
  a.kv.n_kv = 1;
  a.kv.head_dim = 64;
  a.kv.k_bits = a.kv.v_bits = 4;
  a.kv.v_group = 32;
  a.kv.keys_rotated = true;
  a.n_heads = 1;
  CHECK(launch_decode_attention(a, nullptr) == cudaErrorInvalidValue);
  CHECK(last_launch_error().find("keys_rotated") != std::string::npos);
}
