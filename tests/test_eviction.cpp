// runtime/eviction: token eviction in the compressed KV cache (CPU reference) — every policy
// keeps exactly its budget per layer and KV head (per-head budgets of format v2 included), H2O
// scores equal those of a naive full attention matrix, window / sinks keep exactly the right
// tokens, attention after eviction equals a naive attention over what is held (RoPE at the stored
// positions, centroids with log(count)), clustering keeps the attention mass of merged tokens
// within its bound, learned scores equal a hand-computed linear / MLP, the guard's precision
// assignment is exact, the current token and the window are never evicted, bytes held shrink and
// equal the byte accounting; the shipped templates run end to end through the model.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kernels/common/error.h"
#include "model/llama.h"
#include "model/runtime_cache.h"
#include "model/tokenizer.h"
#include "presets/preset_export.h"
#include "runtime/budget_match.h"
#include "runtime/byte_accounting.h"
#include "runtime/compressed_cache.h"
#include "runtime/eviction/evicting_layer.h"
#include "runtime/eviction/select.h"
#include "runtime/preset.h"
#include "runtime/rope.h"
#include "tests/test_util.h"
#include "tests/torch_doctest.h"

using namespace kvcal;

namespace {

std::size_t sz(std::int64_t n) {
  return static_cast<std::size_t>(n);
}

kv_method quant_method(int bits, int group, quant_axis axis) {
  kv_method m;
  m.kind = kv_method_kind::quant;
  m.quant = {bits, group, axis, false};
  return m;
}

token_policy window_pol(std::int64_t sinks, std::int64_t recent) {
  token_policy p;
  p.kind = token_policy_kind::window;
  p.sinks = sinks;
  p.recent = recent;
  return p;
}
token_policy kind_pol(token_policy_kind k) {
  token_policy p;
  p.kind = k;
  return p;
}
token_policy cluster_pol(std::int64_t k) {
  token_policy p;
  p.kind = token_policy_kind::cluster;
  p.clusters = k;
  return p;
}
token_budget tokens_budget(std::int64_t n) {
  token_budget b;
  b.kind = budget_kind::tokens;
  b.tokens = n;
  return b;
}
token_budget retain_budget(double r) {
  token_budget b;
  b.kind = budget_kind::retain;
  b.retain = r;
  return b;
}

preset_recipe make_recipe(int layers, int n_kv, int d) {
  preset_recipe r;
  r.name = "test";
  r.model.model_type = "llama";
  r.model.n_layers = layers;
  r.model.n_kv_heads = n_kv;
  r.model.head_dim = d;
  r.model.rope.theta = 10000.0;
  r.model.config_sha256 = std::string(64, '0');
  r.layers.resize(static_cast<std::size_t>(layers));
  return r;
}

struct tensor_store {
  std::vector<std::vector<float>> data;
  std::vector<tensor_view> views;
  void add(const std::string& name, std::vector<std::int64_t> shape, std::vector<float> v) {
    data.push_back(std::move(v));
    tensor_view tv;
    tv.name = name;
    tv.dtype = st_dtype::F32;
    tv.shape = std::move(shape);
    tv.data = reinterpret_cast<const std::uint8_t*>(data.back().data());
    tv.nbytes = data.back().size() * 4;
    views.push_back(tv);
  }
};

std::vector<float> randn(std::size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0, 1);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng) * scale;
  return v;
}

// One sequence's activations: k, v [N, n_kv, d] (K before RoPE), q [N, n_heads, d] after RoPE,
// hidden [N, hidden].
struct sequence {
  int n_heads, n_kv, d, hidden;
  std::int64_t N;
  std::vector<float> k, v, q, h;
};

sequence make_sequence(std::int64_t N, int n_heads, int n_kv, int d, unsigned seed,
                       int hidden = 0) {
  sequence s{n_heads, n_kv, d, hidden, N, {}, {}, {}, {}};
  s.k = randn(sz(N) * sz(n_kv) * sz(d), seed);
  s.v = randn(s.k.size(), seed + 1);
  s.q = randn(sz(N) * sz(n_heads) * sz(d), seed + 2, 1.5f);
  s.h = randn(sz(N) * sz(std::max(hidden, 1)), seed + 3);
  return s;
}

// Queries of tokens [a, a + T) as attend() takes them: [n_heads, T, d].
std::vector<float> queries(const sequence& s, std::int64_t a, std::int64_t T) {
  std::vector<float> q(sz(s.n_heads) * sz(T) * sz(s.d));
  for (int h = 0; h < s.n_heads; ++h)
    for (std::int64_t t = 0; t < T; ++t)
      for (int c = 0; c < s.d; ++c)
        q[(sz(h) * sz(T) + sz(t)) * sz(s.d) + sz(c)] =
            s.q[(sz(a + t) * sz(s.n_heads) + sz(h)) * sz(s.d) + sz(c)];
  return q;
}

std::vector<float> inv_freq_of(const preset_recipe& r, float* scaling) {
  std::vector<float> f(sz(r.model.head_dim / 2));
  *scaling = rope_inv_freq(r.model.rope, static_cast<int>(r.model.head_dim), 0, 0, f.data());
  return f;
}

// RoPE, rotate-half convention (written out here, independent of kernels/cpu/rope.h); sign -1
// rotates back.
void rotate(float* x, int d, std::int64_t pos, const std::vector<float>& inv, float scaling,
            float sign = 1.0f) {
  const int half = d / 2;
  for (int i = 0; i < half; ++i) {
    const float a = static_cast<float>(pos) * inv[sz(i)];
    const float c = std::cos(a) * scaling, sn = sign * std::sin(a) * scaling;
    const float x0 = x[i], x1 = x[i + half];
    x[i] = x0 * c - x1 * sn;
    x[i + half] = x1 * c + x0 * sn;
  }
}

// Attention of queries q [n_heads, T, d] at `positions` over what layer `l` holds now, computed
// naively from reconstruct() (keys rotated at the held positions) and the centroids.
std::vector<float> naive_attend(compressed_cache& c, int l, const std::vector<float>& q,
                                const std::int64_t* positions, std::int64_t T) {
  const cache_dims& dims = c.dims();
  const int d = dims.head_dim, rep = dims.n_heads / dims.n_kv_heads;
  float scaling = 1;
  const auto inv = inv_freq_of(c.recipe(), &scaling);
  const evicting_layer* ev = c.eviction(l);
  std::vector<float> out(sz(dims.n_heads) * sz(T) * sz(d), 0.0f);
  for (int h = 0; h < dims.n_kv_heads; ++h) {
    const std::vector<std::int64_t> pos = ev->positions(h);
    const std::int64_t n = static_cast<std::int64_t>(pos.size());
    std::vector<float> k(sz(n) * sz(d)), v(sz(n) * sz(d));
    c.reconstruct(l, h, false, k.data());
    c.reconstruct(l, h, true, v.data());
    for (std::int64_t i = 0; i < n; ++i)
      rotate(k.data() + sz(i) * sz(d), d, pos[sz(i)], inv, scaling);
    const centroid_set& cen = ev->centroids(h);
    for (std::int64_t cc = 0; cc < cen.size(); ++cc) {
      std::vector<float> kc(sz(d)), vc(sz(d));
      cen.key(cc, kc.data());
      cen.value(cc, vc.data());
      k.insert(k.end(), kc.begin(), kc.end());
      v.insert(v.end(), vc.begin(), vc.end());
    }
    const std::int64_t m = cen.size();
    for (int r = 0; r < rep; ++r) {
      const int qh = h * rep + r;
      for (std::int64_t t = 0; t < T; ++t) {
        const float* qq = q.data() + (sz(qh) * sz(T) + sz(t)) * sz(d);
        std::vector<double> s(sz(n + m), -1e300);
        double mx = -1e300;
        for (std::int64_t j = 0; j < n + m; ++j) {
          const bool vis = j < n ? pos[sz(j)] <= positions[t] : cen.position(j - n) <= positions[t];
          if (!vis) continue;
          double dot = 0;
          for (int cc = 0; cc < d; ++cc) dot += double(qq[cc]) * k[sz(j) * sz(d) + sz(cc)];
          s[sz(j)] = dot / std::sqrt(double(d)) + (j >= n ? std::log(cen.count(j - n)) : 0.0);
          mx = std::max(mx, s[sz(j)]);
        }
        double sum = 0;
        for (auto& x : s) sum += (x = x > -1e299 ? std::exp(x - mx) : 0.0);
        float* o = out.data() + (sz(qh) * sz(T) + sz(t)) * sz(d);
        for (std::int64_t j = 0; j < n + m; ++j)
          for (int cc = 0; cc < d; ++cc)
            o[cc] += static_cast<float>(s[sz(j)] / sum * v[sz(j) * sz(d) + sz(cc)]);
      }
    }
  }
  return out;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - b[i]));
  return m;
}

// Feeds a sequence through a cache: prefill then single steps, every layer; after each attend
// calls `check(seen)`. Before each attend (of every `verify` step) checks attention against the
// naive attention over what is held.
struct driver {
  compressed_cache& c;
  const sequence& s;
  std::int64_t seen = 0;
  bool verify = true;
  double max_err = 0;

  void step(std::int64_t T) {
    std::vector<std::int64_t> pos(sz(T));
    for (std::int64_t t = 0; t < T; ++t) pos[sz(t)] = seen + t;
    const std::vector<float> q = queries(s, seen, T);
    for (int l = 0; l < c.dims().n_layers; ++l) {
      const std::size_t off = sz(seen) * sz(s.n_kv) * sz(s.d);
      c.append(l, s.k.data() + off, s.v.data() + off, pos.data(), T,
               s.hidden ? s.h.data() + sz(seen) * sz(s.hidden) : nullptr, s.hidden);
      std::vector<float> out(q.size());
      std::vector<float> want;
      if (verify && c.eviction(l)) want = naive_attend(c, l, q, pos.data(), T);
      c.attend(l, q.data(), pos.data(), T, out.data());
      if (!want.empty()) max_err = std::max(max_err, max_abs_diff(out, want));
    }
    seen += T;
  }
};

cache_dims dims_of(const preset_recipe& r, int n_heads) {
  return {static_cast<int>(r.model.n_layers), n_heads, static_cast<int>(r.model.n_kv_heads),
          static_cast<int>(r.model.head_dim), 0,       0};
}

// Bytes the pages may exceed the live records by: partly filled pages, per KV head and layer:
// fp16 and records of K and V, the index, K and V centroids.
double page_slack(const compressed_cache& c, int page_tokens) {
  const cache_dims& d = c.dims();
  return double(d.n_layers) * d.n_kv_heads * 7.0 * page_tokens * d.head_dim * 2.0 * 2;
}

}  // namespace

TEST_CASE("every policy keeps exactly its budget per layer and KV head; accounting == pages") {
  struct policy_case {
    std::string name;
    token_policy p;
  };
  token_policy learned = kind_pol(token_policy_kind::learned);
  learned.learned.features = policy_features::key;
  learned.learned.in_dim = 16;
  token_policy h2o = kind_pol(token_policy_kind::h2o);
  h2o.heavy = 0.75;
  h2o.recent_fraction = 0.25;
  const std::vector<policy_case> cases = {{"window", window_pol(2, 9)},
                                          {"h2o", h2o},
                                          {"lru", kind_pol(token_policy_kind::lru)},
                                          {"cluster", cluster_pol(3)},
                                          {"learned", learned},
                                          {"full", kind_pol(token_policy_kind::full)}};
  for (const auto& pc : cases) {
    for (int variant = 0; variant < 2; ++variant) {  // fp16, then the hybrid layout
      CAPTURE(pc.name);
      CAPTURE(variant);
      preset_recipe r = make_recipe(3, 2, 16);
      for (std::size_t l = 0; l < 3; ++l) {
        auto& lr = r.layers[l];
        lr.policy = pc.p;
        if (pc.p.kind != token_policy_kind::window && pc.p.kind != token_policy_kind::full)
          lr.budget = l == 2 ? tokens_budget(10) : retain_budget(l == 0 ? 0.5 : 0.3);  // pyramid
        if (variant == 1) {
          lr.k = quant_method(2, 8, quant_axis::per_channel);
          lr.v = quant_method(2, 8, quant_axis::per_token);
          lr.guard = 0.5;
          lr.residual = 3;
        }
      }
      if (pc.p.kind == token_policy_kind::full && variant == 0) continue;  // not an evicting layer
      tensor_store ts;
      if (pc.p.kind == token_policy_kind::learned)
        for (int l = 0; l < 3; ++l) {
          ts.add("layers." + std::to_string(l) + ".policy.weight", {2, 16}, randn(32, 7u + l));
          ts.add("layers." + std::to_string(l) + ".policy.bias", {2}, randn(2, 9u + l));
        }
      compressed_cache c(r, ts.views, dims_of(r, 4), {});
      const sequence s = make_sequence(80, 4, 2, 16, 11);
      driver dr{c, s};
      auto check = [&] {
        for (int l = 0; l < 3; ++l) {
          const evicting_layer* ev = c.eviction(l);
          REQUIRE(ev != nullptr);
          for (int h = 0; h < 2; ++h) CHECK(ev->held(h) == ev->policy().retained(dr.seen, h));
        }
        const cache_stats st = c.stats();
        CHECK(double(st.bytes_used) == account_bytes(r, dr.seen).total());
        CHECK(double(st.bytes_held) >= double(st.bytes_used));
        CHECK(double(st.bytes_held) <= double(st.bytes_used) + page_slack(c, 64));
      };
      dr.step(40);
      check();
      for (int t = 0; t < 40; ++t) {
        dr.step(1);
        check();
      }
      CHECK(dr.max_err < 2e-4);  // attention over what is held, RoPE at the stored positions
      if (pc.p.kind == token_policy_kind::window) {
        const std::vector<std::int64_t> pos = c.eviction(1)->positions(0);
        std::vector<std::int64_t> want = {0, 1};
        for (std::int64_t p = 80 - 9; p < 80; ++p) want.push_back(p);
        CHECK(pos == want);  // exactly the sinks and the last `recent`
      }
    }
  }
}

namespace {

// Naive budget of one head (the preset format's rule, written out here): min(seen, max(1, b)).
std::int64_t naive_budget(const token_budget& b, std::int64_t seen) {
  const std::int64_t n = b.kind == budget_kind::tokens
                             ? b.tokens
                             : static_cast<std::int64_t>(std::floor(b.retain * double(seen)));
  return std::min(seen, std::max<std::int64_t>(1, n));
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE(
    "per-KV-head budgets: every policy keeps exactly its head's budget; bytes == accounting") {
  token_policy learned = kind_pol(token_policy_kind::learned);
  learned.learned.features = policy_features::key;
  learned.learned.in_dim = 16;
  const std::vector<std::pair<std::string, token_policy>> cases = {
      {"h2o", kind_pol(token_policy_kind::h2o)},
      {"lru", kind_pol(token_policy_kind::lru)},
      {"cluster", cluster_pol(3)},
      {"learned", learned}};
  const int H = 3, d = 16;
  // [layer][head]: tokens and retain mixed, heads far apart.
  const std::vector<std::vector<token_budget>> hb = {
      {tokens_budget(5), retain_budget(0.5), tokens_budget(12)},
      {retain_budget(0.1), retain_budget(0.3), tokens_budget(20)}};
  for (const auto& pc : cases) {
    for (int variant = 0; variant < 2; ++variant) {  // fp16, then the hybrid layout
      CAPTURE(pc.first);
      CAPTURE(variant);
      preset_recipe r = make_recipe(2, H, d);
      for (std::size_t l = 0; l < 2; ++l) {
        auto& lr = r.layers[l];
        lr.policy = pc.second;
        lr.budget = retain_budget(0.3);  // replaced per head
        lr.head_budgets = hb[l];
        if (variant == 1) {
          lr.k = quant_method(2, 8, quant_axis::per_channel);
          lr.v = quant_method(2, 8, quant_axis::per_token);
          lr.guard = 0.5;
          lr.residual = 3;
        }
      }
      // The recipe round-trips through its stored form, head budgets included.
      CHECK(parse_recipe(recipe_to_json(r), "t") == r);
      tensor_store ts;
      for (int l = 0; l < 2; ++l) {
        ts.add("layers." + std::to_string(l) + ".policy.weight", {H, d}, randn(H * d, 7u + l));
        ts.add("layers." + std::to_string(l) + ".policy.bias", {H}, randn(H, 9u + l));
      }
      const bool learned_case = pc.second.kind == token_policy_kind::learned;
      compressed_cache c(r, learned_case ? ts.views : std::vector<tensor_view>{}, dims_of(r, 6),
                         {});
      const sequence s = make_sequence(70, 6, H, d, 13);
      driver dr{c, s};
      auto check = [&] {
        double naive_bytes = 0;  // fp16 variant: every held token is 2 fp16 rows
        for (int l = 0; l < 2; ++l) {
          const evicting_layer* ev = c.eviction(l);
          REQUIRE(ev != nullptr);
          for (int h = 0; h < H; ++h) {
            const std::int64_t R = naive_budget(hb[sz(l)][sz(h)], dr.seen);
            CHECK(ev->held(h) == R);
            CHECK(std::int64_t(ev->positions(h).size()) == R);
            const double cen = pc.second.kind == token_policy_kind::cluster
                                   ? double(std::min<std::int64_t>(3, dr.seen - R))
                                   : 0.0;
            naive_bytes += (double(R) + cen) * d * 2 * 2 + (R < dr.seen ? 4.0 * double(R) : 0.0);
          }
        }
        const cache_stats st = c.stats();
        CHECK(double(st.bytes_used) == account_bytes(r, dr.seen).total());
        if (variant == 0) CHECK(double(st.bytes_used) == naive_bytes);
        CHECK(double(st.bytes_held) >= double(st.bytes_used));
        CHECK(double(st.bytes_held) <= double(st.bytes_used) + page_slack(c, 64));
      };
      dr.step(40);
      check();
      for (int t = 0; t < 30; ++t) {
        dr.step(1);
        check();
      }
      CHECK(dr.max_err < 2e-4);
      if (pc.second.kind == token_policy_kind::learned) {
        // Static scores and a fixed budget in tokens: each head keeps its newest token (and the
        // window) and the best others up to its own budget — recomputed by hand from the scorer.
        // (A retain budget grows with the context: tokens evicted earlier stay gone.)
        const auto w = randn(H * d, 7u), b = randn(H, 9u);
        for (int h : {0, 2}) {
          const std::int64_t R = naive_budget(hb[0][sz(h)], 70);
          const std::int64_t keep_new = variant == 1 ? 3 : 1;  // residual 3, else the newest
          std::vector<double> sc(70);
          for (int i = 0; i < 70; ++i) {
            double x = b[sz(h)];
            for (int cc = 0; cc < d; ++cc)
              x +=
                  double(w[sz(h) * sz(d) + sz(cc)]) * s.k[(sz(i) * sz(H) + sz(h)) * sz(d) + sz(cc)];
            sc[sz(i)] = x;
          }
          std::vector<int> older(sz(70 - keep_new));
          for (int i = 0; i < 70 - keep_new; ++i) older[sz(i)] = i;
          std::sort(older.begin(), older.end(),
                    [&](int a, int bb) { return sc[sz(a)] > sc[sz(bb)]; });
          std::set<std::int64_t> expect(older.begin(), older.begin() + (R - keep_new));
          for (std::int64_t p = 70 - keep_new; p < 70; ++p) expect.insert(p);
          const auto pos = c.eviction(0)->positions(h);
          CHECK(std::set<std::int64_t>(pos.begin(), pos.end()) == expect);
        }
      }
    }
  }
}

TEST_CASE(
    "per-KV-head budgets: H2O after prefill keeps each head's own top set of a naive matrix") {
  const int H = 2, rep = 3, d = 16, N = 40;
  const std::vector<std::int64_t> budget = {6, 17};
  preset_recipe r = make_recipe(1, H, d);
  r.layers[0].policy = kind_pol(token_policy_kind::h2o);
  r.layers[0].policy.heavy = 0.5;
  r.layers[0].policy.recent_fraction = 0.5;
  r.layers[0].budget = tokens_budget(8);
  r.layers[0].head_budgets = {tokens_budget(budget[0]), tokens_budget(budget[1])};
  preset_recipe all = r;  // keeps everything: its stored keys feed the naive matrix
  all.layers[0].budget = tokens_budget(1000);
  all.layers[0].head_budgets.clear();
  compressed_cache c(r, {}, dims_of(r, H * rep), {}), ref(all, {}, dims_of(all, H * rep), {});
  const sequence s = make_sequence(N, H * rep, H, d, 29);
  driver dr{c, s}, dref{ref, s};
  dr.step(N);  // one prefill: eviction from the prefill's attention
  dref.step(N);
  float scaling = 1;
  const auto inv = inv_freq_of(r, &scaling);
  for (int h = 0; h < H; ++h) {
    std::vector<float> k(sz(N) * sz(d));
    ref.reconstruct(0, h, false, k.data());
    for (int i = 0; i < N; ++i) rotate(k.data() + i * d, d, i, inv, scaling);
    std::vector<double> cum(sz(N), 0.0);
    for (int i = 0; i < N; ++i)
      for (int rr = 0; rr < rep; ++rr) {
        const float* q = s.q.data() + (sz(i) * sz(H * rep) + sz(h * rep + rr)) * sz(d);
        std::vector<double> p(sz(i + 1));
        double mx = -1e300, sum = 0;
        for (int j = 0; j <= i; ++j) {
          double dot = 0;
          for (int cc = 0; cc < d; ++cc) dot += double(q[cc]) * k[sz(j) * sz(d) + sz(cc)];
          mx = std::max(mx, p[sz(j)] = dot / 4.0);
        }
        for (auto& x : p) sum += (x = std::exp(x - mx));
        for (int j = 0; j <= i; ++j) cum[sz(j)] += p[sz(j)] / sum / rep;
      }
    // Recent share R - floor(0.5 R), then the best-scored of the older ones.
    const std::int64_t R = budget[sz(h)], recent = R - R / 2;
    std::vector<int> older(sz(N - recent));
    for (int i = 0; i < N - recent; ++i) older[sz(i)] = i;
    std::sort(older.begin(), older.end(), [&](int a, int b) { return cum[sz(a)] > cum[sz(b)]; });
    std::vector<std::int64_t> expect(older.begin(), older.begin() + (R - recent));
    for (std::int64_t p = N - recent; p < N; ++p) expect.push_back(p);
    std::sort(expect.begin(), expect.end());
    CHECK(c.eviction(0)->positions(h) == expect);
  }
  CHECK(c.eviction(0)->held(0) == 6);
  CHECK(c.eviction(0)->held(1) == 17);
}

TEST_CASE("head_budgets: format version 2; version 1 files still read; bad entries refused") {
  preset_recipe r = make_recipe(1, 2, 16);
  r.layers[0].policy = kind_pol(token_policy_kind::h2o);
  r.layers[0].budget = retain_budget(0.25);
  nlohmann::json j = recipe_to_json(r);
  CHECK(j["version"] == 2);
  j["version"] = 1;  // an older preset (no head budgets) still reads
  CHECK(parse_recipe(j, "old.safetensors") == r);
  auto err = [&](nlohmann::json x) {
    try {
      parse_recipe(x, "p.safetensors");
    } catch (const kvcal::error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  j["layers"][0]["head_budgets"] = {{{"tokens", 4}}, {{"retain", 0.5}}};
  CHECK_MESSAGE(contains(err(j), "layers[0].head_budgets: not part of format version 1"), err(j));
  j["version"] = 2;
  CHECK(parse_recipe(j, "p").layers[0].budget_of(1).retain == 0.5);
  j["layers"][0]["head_budgets"] = {{{"tokens", 4}}};
  CHECK_MESSAGE(contains(err(j), "layers[0].head_budgets: expected an array of n_kv_heads = 2"),
                err(j));
  j["layers"][0]["head_budgets"] = {{{"tokens", 4}}, {{"tokens", 0}}};
  CHECK_MESSAGE(contains(err(j), "layers[0].head_budgets[1].tokens"), err(j));
  j["layers"][0]["policy"] = {{"window", {{"recent", 8}}}};
  j["layers"][0]["head_budgets"] = {{{"tokens", 4}}, {{"tokens", 3}}};
  CHECK_MESSAGE(contains(err(j), "policy 'window' takes no budget"), err(j));
}

TEST_CASE("H2O scores equal the cumulative attention of a naive full attention matrix") {
  preset_recipe r = make_recipe(1, 2, 16);
  r.layers[0].policy = kind_pol(token_policy_kind::h2o);
  r.layers[0].budget = tokens_budget(1000);  // nothing evicted: every query's attention counts
  compressed_cache c(r, {}, dims_of(r, 6), {});
  const sequence s = make_sequence(45, 6, 2, 16, 21);
  driver dr{c, s};
  dr.step(30);
  for (int t = 0; t < 15; ++t) dr.step(1);
  float scaling = 1;
  const auto inv = inv_freq_of(r, &scaling);
  const int d = 16, rep = 3;
  for (int h = 0; h < 2; ++h) {
    std::vector<float> k(45 * 16);
    c.reconstruct(0, h, false, k.data());
    for (int i = 0; i < 45; ++i) rotate(k.data() + i * d, d, i, inv, scaling);
    std::vector<double> cum(45, 0.0);  // sum over queries i of mean over the group of P_h[i, j]
    for (int i = 0; i < 45; ++i) {
      for (int rr = 0; rr < rep; ++rr) {
        const float* q = s.q.data() + (sz(i) * 6 + sz(h * rep + rr)) * sz(d);
        std::vector<double> p(sz(i + 1));
        double mx = -1e300, sum = 0;
        for (int j = 0; j <= i; ++j) {
          double dot = 0;
          for (int cc = 0; cc < d; ++cc) dot += double(q[cc]) * k[sz(j) * sz(d) + sz(cc)];
          p[sz(j)] = dot / 4.0;
          mx = std::max(mx, p[sz(j)]);
        }
        for (auto& x : p) sum += (x = std::exp(x - mx));
        for (int j = 0; j <= i; ++j) cum[sz(j)] += p[sz(j)] / sum / rep;
      }
    }
    const std::vector<double> got = c.eviction(0)->scores(h);
    REQUIRE(got.size() == 45);
    double total = 0;
    for (int j = 0; j < 45; ++j) {
      CHECK(got[sz(j)] == doctest::Approx(cum[sz(j)]).epsilon(1e-4));
      total += got[sz(j)];
    }
    CHECK(total == doctest::Approx(45.0).epsilon(1e-5));  // every query's mass is 1
  }
}

TEST_CASE("H2O keeps its recent share and the heavy hitters by score; LRU by last use") {
  preset_recipe r = make_recipe(1, 2, 16);
  r.layers[0].policy = kind_pol(token_policy_kind::h2o);
  r.layers[0].policy.heavy = 0.6;
  r.layers[0].policy.recent_fraction = 0.4;
  r.layers[0].budget = tokens_budget(10);
  compressed_cache c(r, {}, dims_of(r, 4), {});
  const sequence s = make_sequence(60, 4, 2, 16, 5);
  driver dr{c, s};
  dr.step(30);
  for (int t = 0; t < 30; ++t) {
    // Before the step: the heavy hitters of the next eviction are the best scored of the older.
    dr.step(1);
    for (int h = 0; h < 2; ++h) {
      const auto pos = c.eviction(0)->positions(h);
      REQUIRE(pos.size() == 10);
      for (int i = 0; i < 4; ++i) CHECK(pos[sz(6 + i)] == dr.seen - 4 + i);  // recent 10 - 6
      CHECK(std::is_sorted(pos.begin(), pos.end()));
    }
  }
  CHECK(dr.max_err < 2e-4);
}

TEST_CASE("eviction never removes the current token or the fp16 window") {
  for (auto kind : {token_policy_kind::h2o, token_policy_kind::lru, token_policy_kind::cluster,
                    token_policy_kind::learned}) {
    CAPTURE(token_policy_name(kind));
    preset_recipe r = make_recipe(1, 2, 16);
    auto& lr = r.layers[0];
    lr.policy = kind == token_policy_kind::cluster ? cluster_pol(2) : kind_pol(kind);
    lr.policy.learned.features = policy_features::key;
    lr.policy.learned.in_dim = 16;
    lr.budget = tokens_budget(9);
    lr.residual = 5;
    tensor_store ts;
    // A scorer that ranks every new token lowest: the window must still keep them.
    ts.add("layers.0.policy.weight", {2, 16}, std::vector<float>(32, 0.0f));
    ts.add("layers.0.policy.bias", {2}, {-1.0f, -1.0f});
    compressed_cache c(r,
                       kind == token_policy_kind::learned ? ts.views : std::vector<tensor_view>{},
                       dims_of(r, 4), {});
    const sequence s = make_sequence(50, 4, 2, 16, 3);
    driver dr{c, s};
    dr.step(20);
    for (int t = 0; t < 30; ++t) {
      dr.step(1);
      for (int h = 0; h < 2; ++h) {
        const auto pos = c.eviction(0)->positions(h);
        REQUIRE(pos.size() == 9);
        for (int i = 0; i < 5; ++i) CHECK(pos[sz(4 + i)] == dr.seen - 5 + i);
      }
    }
  }
}

TEST_CASE("budget 1: the current token alone is kept") {
  preset_recipe r = make_recipe(1, 1, 8);
  r.layers[0].policy = kind_pol(token_policy_kind::h2o);
  r.layers[0].budget = retain_budget(0.01);
  compressed_cache c(r, {}, dims_of(r, 2), {});
  const sequence s = make_sequence(12, 2, 1, 8, 1);
  driver dr{c, s};
  dr.step(5);
  CHECK(c.eviction(0)->positions(0) == std::vector<std::int64_t>{4});
  dr.step(1);
  CHECK(c.eviction(0)->positions(0) == std::vector<std::int64_t>{5});
  CHECK(double(c.stats().bytes_used) == account_bytes(r, 6).total());
}

TEST_CASE("clustering keeps the attention mass of merged tokens within its bound") {
  const int d = 16;
  preset_recipe r = make_recipe(1, 1, d);
  r.layers[0].policy = cluster_pol(1);
  r.layers[0].budget = tokens_budget(6);
  compressed_cache c(r, {}, dims_of(r, 1), {});
  // Keys near one direction after RoPE: rotate a common vector back to each position, + noise.
  float scaling = 1;
  const auto inv = inv_freq_of(r, &scaling);
  const int N = 30;
  sequence s = make_sequence(N, 1, 1, d, 9);
  const std::vector<float> base = randn(sz(d), 77, 1.0f);
  const std::vector<float> noise = randn(sz(N) * sz(d), 78, 0.05f);
  std::vector<float> rotated(sz(N) * sz(d));  // what the keys are after RoPE
  for (int i = 0; i < N; ++i) {
    float* kr = rotated.data() + sz(i) * sz(d);
    for (int cc = 0; cc < d; ++cc) kr[cc] = base[sz(cc)] + noise[sz(i) * sz(d) + sz(cc)];
    float* kp = s.k.data() + sz(i) * sz(d);  // the pre-RoPE key: rotated back by -p
    std::copy(kr, kr + d, kp);
    rotate(kp, d, i, inv, 1.0f, -1.0f);
  }
  driver dr{c, s};
  dr.step(N);
  const evicting_layer* ev = c.eviction(0);
  const auto kept = ev->positions(0);
  REQUIRE(kept.size() == 6);
  const centroid_set& cen = ev->centroids(0);
  REQUIRE(cen.size() == 1);
  CHECK(cen.count(0) == N - 6);
  std::vector<float> kc(sz(d));
  cen.key(0, kc.data());
  std::vector<int> members;
  for (int i = 0; i < N; ++i)
    if (!std::count(kept.begin(), kept.end(), i)) members.push_back(i);
  double r_max = 0;
  for (int i : members) {
    double e2 = 0;
    for (int cc = 0; cc < d; ++cc) {
      const double e = double(rotated[sz(i) * sz(d) + sz(cc)]) - kc[sz(cc)];
      e2 += e * e;
    }
    r_max = std::max(r_max, std::sqrt(e2));
  }
  const std::vector<float> qs = randn(20 * sz(d), 99, 1.5f);
  for (int t = 0; t < 20; ++t) {
    const float* q = qs.data() + sz(t) * sz(d);
    double qn = 0, mass = 0, cd = 0;
    for (int cc = 0; cc < d; ++cc) {
      qn += double(q[cc]) * q[cc];
      cd += double(q[cc]) * kc[sz(cc)];
    }
    for (int i : members) {
      double dot = 0;
      for (int cc = 0; cc < d; ++cc) dot += double(q[cc]) * rotated[sz(i) * sz(d) + sz(cc)];
      mass += std::exp(dot / 4.0);
    }
    const double cmass = cen.count(0) * std::exp(cd / 4.0);
    const double bound = std::exp(std::sqrt(qn) * r_max / 4.0);
    CHECK(mass / cmass >= 1.0 - 2e-3);  // Jensen (fp16 rounding of the centroid aside)
    CHECK(mass / cmass <= bound * (1.0 + 2e-3));
    CHECK(std::fabs(std::log(mass / cmass)) < 0.02);  // tight: the members are close
  }
}

TEST_CASE("cluster: more centroids than one, counts add up to the evicted tokens") {
  preset_recipe r = make_recipe(2, 2, 16);
  for (auto& lr : r.layers) {
    lr.policy = cluster_pol(3);
    lr.budget = retain_budget(0.25);
  }
  compressed_cache c(r, {}, dims_of(r, 4), {});
  const sequence s = make_sequence(60, 4, 2, 16, 4);
  driver dr{c, s};
  dr.step(40);
  for (int t = 0; t < 20; ++t) dr.step(1);
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 2; ++h) {
      const centroid_set& cen = c.eviction(l)->centroids(h);
      CHECK(cen.size() == 3);
      double n = 0;
      for (std::int64_t i = 0; i < cen.size(); ++i) n += cen.count(i);
      CHECK(n == 60 - c.eviction(l)->held(h));
    }
  CHECK(dr.max_err < 2e-4);  // centroids attended with log(count)
  CHECK(c.stats().centroids.bytes_used == sz(2 * 2 * 3 * 2 * 16 * 2));
}

TEST_CASE("learned policy: scores equal a hand-computed linear / MLP on keys and hidden states") {
  const int d = 16, H = 2, hidden = 24, M = 5;
  for (int variant = 0; variant < 3; ++variant) {  // linear on keys, MLP on keys, linear on hidden
    CAPTURE(variant);
    preset_recipe r = make_recipe(1, H, d);
    auto& lr = r.layers[0];
    lr.policy = kind_pol(token_policy_kind::learned);
    lr.policy.learned.features = variant == 2 ? policy_features::hidden : policy_features::key;
    lr.policy.learned.in_dim = variant == 2 ? hidden : d;
    lr.policy.learned.mlp_hidden = variant == 1 ? M : 0;
    lr.budget = tokens_budget(10);
    lr.residual = 2;
    const int I = static_cast<int>(lr.policy.learned.in_dim);
    tensor_store ts;
    const auto w1 = randn(sz(variant == 1 ? M : H) * sz(I), 31);
    const auto b1 = randn(sz(variant == 1 ? M : H), 32);
    const auto w2 = randn(sz(H) * sz(M), 33);
    const auto b2 = randn(sz(H), 34);
    if (variant == 1) {
      ts.add("layers.0.policy.fc1.weight", {M, I}, w1);
      ts.add("layers.0.policy.fc1.bias", {M}, b1);
      ts.add("layers.0.policy.fc2.weight", {H, M}, w2);
      ts.add("layers.0.policy.fc2.bias", {H}, b2);
    } else {
      ts.add("layers.0.policy.weight", {H, I}, w1);
      ts.add("layers.0.policy.bias", {H}, b1);
    }
    auto hand = [&](int h, const float* x) {
      if (variant != 1) {
        double sc = b1[sz(h)];
        for (int i = 0; i < I; ++i) sc += double(w1[sz(h) * sz(I) + sz(i)]) * x[i];
        return sc;
      }
      double sc = b2[sz(h)];
      for (int m = 0; m < M; ++m) {
        double a = b1[sz(m)];
        for (int i = 0; i < I; ++i) a += double(w1[sz(m) * sz(I) + sz(i)]) * x[i];
        sc += double(w2[sz(h) * sz(M) + sz(m)]) * std::max(0.0, a);
      }
      return sc;
    };
    compressed_cache c(r, ts.views, dims_of(r, 4), {});
    const sequence s = make_sequence(40, 4, H, d, 8, variant == 2 ? hidden : 0);
    driver dr{c, s};
    dr.step(25);
    for (int t = 0; t < 15; ++t) dr.step(1);
    for (int h = 0; h < H; ++h) {
      std::vector<double> want(40);
      for (int i = 0; i < 40; ++i)
        want[sz(i)] = hand(h, variant == 2 ? s.h.data() + sz(i) * sz(hidden)
                                           : s.k.data() + (sz(i) * sz(H) + sz(h)) * sz(d));
      const auto pos = c.eviction(0)->positions(h);
      const auto got = c.eviction(0)->scores(h);
      REQUIRE(pos.size() == 10);
      for (std::size_t j = 0; j < pos.size(); ++j)
        CHECK(got[j] == doctest::Approx(want[sz(pos[j])]).epsilon(1e-5));
      // Kept: the last 2 (window) and the 8 best of the others.
      std::vector<int> older(38);
      for (int i = 0; i < 38; ++i) older[sz(i)] = i;
      std::sort(older.begin(), older.end(),
                [&](int a, int b) { return want[sz(a)] > want[sz(b)]; });
      std::set<std::int64_t> expect(older.begin(), older.begin() + 8);
      expect.insert(38);
      expect.insert(39);
      CHECK(std::set<std::int64_t>(pos.begin(), pos.end()) == expect);
    }
  }
}

TEST_CASE("learned policy with a threshold evicts every token scored below it") {
  preset_recipe r = make_recipe(1, 1, 8);
  auto& lr = r.layers[0];
  lr.policy = kind_pol(token_policy_kind::learned);
  lr.policy.learned.features = policy_features::key;
  lr.policy.learned.in_dim = 8;
  lr.policy.learned.threshold = 0.0;
  lr.residual = 1;
  tensor_store ts;
  const auto w = randn(8, 51);
  ts.add("layers.0.policy.weight", {1, 8}, w);
  ts.add("layers.0.policy.bias", {1}, {0.0f});
  compressed_cache c(r, ts.views, dims_of(r, 2), {});
  const sequence s = make_sequence(30, 2, 1, 8, 52);
  driver dr{c, s};
  dr.step(30);
  std::vector<std::int64_t> want;
  for (int i = 0; i < 30; ++i) {
    double sc = 0;
    for (int cc = 0; cc < 8; ++cc) sc += double(w[sz(cc)]) * s.k[sz(i) * 8 + sz(cc)];
    if (sc >= 0 || i == 29) want.push_back(i);
  }
  CHECK(c.eviction(0)->positions(0) == want);
}

TEST_CASE("guard: the top fraction of kept tokens by score stay fp16, the rest compressed") {
  preset_recipe r = make_recipe(2, 2, 16);
  for (auto& lr : r.layers) {
    lr.policy = kind_pol(token_policy_kind::h2o);
    lr.budget = tokens_budget(21);
    lr.guard = 0.4;
    lr.residual = 4;
    lr.k = quant_method(4, 16, quant_axis::per_token);
    lr.v = quant_method(2, 8, quant_axis::per_token);
  }
  r.layers[1].k = quant_method(2, 8, quant_axis::per_channel);  // blocks of 8 tokens
  compressed_cache c(r, {}, dims_of(r, 4), {});
  const sequence s = make_sequence(60, 4, 2, 16, 13);
  driver dr{c, s};
  dr.step(30);
  for (int t = 0; t < 30; ++t) {
    dr.step(1);
    for (int l = 0; l < 2; ++l)
      for (int h = 0; h < 2; ++h) {
        const evicting_layer* ev = c.eviction(l);
        const auto sc = ev->scores(h);
        const std::int64_t m = static_cast<std::int64_t>(sc.size());
        REQUIRE(m == 21);
        const std::int64_t G = static_cast<std::int64_t>(std::floor(0.4 * double(m - 4)));
        std::vector<int> older(sz(m - 4));
        for (std::size_t i = 0; i < older.size(); ++i) older[i] = static_cast<int>(i);
        std::sort(older.begin(), older.end(), [&](int a, int b) { return sc[sz(a)] > sc[sz(b)]; });
        std::vector<bool> want(sz(m), false);
        for (std::int64_t i = m - 4; i < m; ++i) want[sz(i)] = true;
        for (std::int64_t g = 0; g < G; ++g) want[sz(older[sz(g)])] = true;
        CHECK(ev->stored_fp16(h, true) == want);  // V per-token: exactly window + guard
        if (l == 0) CHECK(ev->stored_fp16(h, false) == want);
        // Per-channel K: whole blocks of the compressed class; the leftover (< 8) waits fp16.
        const std::int64_t C = m - 4 - G;
        CHECK(ev->compressed_tokens(h, false) == (l == 1 ? C / 8 * 8 : C));
        const auto kf = ev->stored_fp16(h, false);
        for (std::int64_t i = 0; i < m; ++i)
          if (want[sz(i)]) CHECK(kf[sz(i)]);
      }
    CHECK(double(c.stats().bytes_used) == account_bytes(r, dr.seen).total());
  }
  CHECK(c.stats().reencoded > 0);  // promotions into the guard, broken K blocks
  CHECK(dr.max_err < 2e-4);
}

TEST_CASE("evicted pages go back: bytes held shrink to the budget and pages are reused") {
  preset_recipe r = make_recipe(2, 2, 32);
  for (auto& lr : r.layers) {
    lr.policy = kind_pol(token_policy_kind::h2o);
    lr.budget = tokens_budget(16);
  }
  compressed_cache c(r, {}, dims_of(r, 4), {16, 0, std::nullopt});
  const sequence s = make_sequence(300, 4, 2, 32, 17);
  std::vector<std::int64_t> pos(200);
  for (int i = 0; i < 200; ++i) pos[sz(i)] = i;
  const std::vector<float> q = queries(s, 0, 200);
  std::vector<float> out(q.size());
  for (int l = 0; l < 2; ++l) c.append(l, s.k.data(), s.v.data(), pos.data(), 200);
  const std::size_t before = c.stats().bytes_held;
  CHECK(before >= 2u * 2 * 2 * 200 * 32 * 2);  // 200 fp16 tokens
  for (int l = 0; l < 2; ++l) c.attend(l, q.data(), pos.data(), 200, out.data());
  const cache_stats after = c.stats();
  CHECK(after.bytes_held < before / 8);
  CHECK(double(after.bytes_used) == account_bytes(r, 200).total());
  CHECK(after.index.bytes_used == sz(2 * 2 * 16 * 4));  // int32 per kept token per KV head
  CHECK(c.seen(0) == 200);
  CHECK(c.length(0) == 16);
  driver dr{c, s, 200, false};
  for (int t = 0; t < 10; ++t) dr.step(1);
  const std::size_t allocs = c.stats().system_allocations;
  for (int t = 0; t < 80; ++t) dr.step(1);
  CHECK(c.stats().system_allocations == allocs);  // steady state: pages come from the pool
  CHECK(double(c.stats().bytes_used) == account_bytes(r, 290).total());
  // reset(): every page back, a new sequence from position 0 evicts the same way again.
  const auto kept = c.eviction(1)->positions(1);
  c.reset();
  CHECK(c.stats().bytes_held == 0);
  CHECK(c.seen(0) == 0);
  driver again{c, s};
  again.step(200);
  for (int t = 0; t < 90; ++t) again.step(1);
  CHECK(c.eviction(1)->positions(1) == kept);
}

TEST_CASE("adaptive mode: nothing evicted or compressed up to compress_after") {
  preset_recipe r = make_recipe(1, 1, 16);
  r.adaptive = {true, 20, 4};
  r.layers[0].policy = kind_pol(token_policy_kind::h2o);
  r.layers[0].budget = tokens_budget(8);
  r.layers[0].v = quant_method(4, 16, quant_axis::per_token);
  compressed_cache c(r, {}, dims_of(r, 2), {});
  const sequence s = make_sequence(30, 2, 1, 16, 23);
  driver dr{c, s};
  dr.step(20);
  CHECK(c.eviction(0)->held(0) == 20);
  CHECK(c.compressed_tokens(0, 0, true) == 0);
  dr.step(1);
  CHECK(c.eviction(0)->held(0) == 8);
  CHECK(c.compressed_tokens(0, 0, true) == 4);
  CHECK(double(c.stats().bytes_used) == account_bytes(r, 21).total());
  CHECK(dr.max_err < 2e-4);
}

TEST_CASE("the sinks cache option is refused with an evicting layer") {
  preset_recipe r = make_recipe(1, 1, 8);
  r.layers[0].policy = window_pol(2, 4);
  CHECK_THROWS_WITH_AS(compressed_cache(r, {}, dims_of(r, 1), {64, 2, std::nullopt}),
                       doctest::Contains("sinks cache option"), kvcal::error);
}

// ---- through the model ----

namespace {

std::string fixture_dir(const std::string& name) {
  return std::string(KVCAL_SOURCE_DIR) + "/tests/fixtures/hf/" + name;
}

const llama_model& llama_fixture() {
  static llama_model m = llama_model::load(fixture_dir("llama"), at::kCPU, at::kFloat);
  return m;
}

// Prefill `prefix` tokens then decode one by one to `total`; returns the logits [total, vocab].
at::Tensor run_model(const llama_model& m, kv_cache& cache, std::int64_t prefix,
                     std::int64_t total) {
  at::Tensor ids = (at::arange(total, at::TensorOptions().dtype(at::kLong)) * 13 + 5)
                       .remainder(m.config().vocab_size)
                       .unsqueeze(0);
  std::vector<at::Tensor> parts;
  parts.push_back(m.forward(ids.narrow(1, 0, prefix), cache));
  for (std::int64_t t = prefix; t < total; ++t)
    parts.push_back(m.forward(ids.narrow(1, t, 1), cache));
  return at::cat(parts, 1)[0];
}

}  // namespace

TEST_CASE("shipped templates export for the llama fixture and run prefill + decode") {
  test::scratch_dir dir;
  const llama_model& m = llama_fixture();
  // kivi and mlsys need head_dim >= 32 / 64 (per-token groups): the reference model runs them.
  for (const std::string name : {"fp16", "h2o", "streaming-llm"}) {
    CAPTURE(name);
    export_params p;
    p.template_name = name;
    p.model_dir = fixture_dir("llama");
    p.out = dir.file(name + ".safetensors");
    const export_result ex = export_preset(p);
    runtime_cache rc(m.config(), p.out, 1);
    rc.reserve(120, 100);
    const at::Tensor logits = run_model(m, rc, 100, 120);
    CHECK(logits.isfinite().all().item<bool>());
    CHECK(rc.length() == 120);
    const cache_stats st = rc.stats();
    CHECK(double(st.bytes_used) == account_bytes(ex.recipe, 120).total());
    if (name == "h2o" || name.rfind("mlsys", 0) == 0)
      CHECK(st.tokens.back() < 120);  // really evicted
  }
}

TEST_CASE("hybrid recipes with small windows evict, guard and cluster through the model") {
  test::scratch_dir dir;
  const llama_model& m = llama_fixture();
  const std::vector<std::string> recipes = {
      R"({"name": "small-hybrid", "layer": {"k": {"quant": {"bits": 2, "group": 8, "axis": "per-channel"}},
          "v": {"quant": {"bits": 2, "group": 8, "axis": "per-token"}}, "policy": {"cluster": {"k": 4}},
          "guard": 0.5, "residual": 4}, "budget": {"pyramid": {"first": 0.5, "last": 0.2}}})",
      R"({"name": "small-streaming", "layer": {"k": "none", "v": "none",
          "policy": {"window": {"sinks": 2, "recent": 14}}}})",
      R"({"name": "small-lru", "layer": {"k": {"quant": {"bits": 4, "group": 16, "axis": "per-token"}},
          "v": "none", "policy": "lru", "residual": 2}, "budget": {"tokens": 12}})"};
  for (const auto& js : recipes) {
    const auto j = nlohmann::json::parse(js);
    CAPTURE(j["name"].get<std::string>());
    export_params p;
    p.recipe_path = dir.file("r.json");
    test::write_bytes(p.recipe_path, js);
    p.model_dir = fixture_dir("llama");
    p.out = dir.file("r.safetensors");
    const export_result ex = export_preset(p);
    runtime_cache rc(m.config(), p.out, 1);
    const at::Tensor logits = run_model(m, rc, 40, 60);
    CHECK(logits.isfinite().all().item<bool>());
    CHECK(rc.length() == 60);
    CHECK(rc.stats().tokens.back() < 60);
    CHECK(double(rc.stats().bytes_used) == account_bytes(ex.recipe, 60).total());
  }
}

TEST_CASE("learned eviction on hidden states gets the model's hidden state through the cache") {
  const llama_model& m = llama_fixture();
  const model_config& cfg = m.config();
  preset_recipe r;
  r.name = "learned-hidden";
  r.model = fingerprint_of(cfg);
  r.layers.resize(sz(cfg.num_hidden_layers));
  tensor_store ts;
  for (std::size_t l = 0; l < r.layers.size(); ++l) {
    auto& lr = r.layers[l];
    lr.policy = kind_pol(token_policy_kind::learned);
    lr.policy.learned.features = policy_features::hidden;
    lr.policy.learned.in_dim = cfg.hidden_size;
    lr.budget = tokens_budget(10);
    const std::string pre = "layers." + std::to_string(l) + ".policy.";
    ts.add(pre + "weight", {cfg.num_key_value_heads, cfg.hidden_size},
           randn(sz(cfg.num_key_value_heads * cfg.hidden_size), 60u + unsigned(l)));
    ts.add(pre + "bias", {cfg.num_key_value_heads},
           std::vector<float>(sz(cfg.num_key_value_heads), 0.0f));
  }
  runtime_cache rc(cfg, r, ts.views, 1);
  const at::Tensor logits = run_model(m, rc, 30, 40);
  CHECK(logits.isfinite().all().item<bool>());
  CHECK(rc.length() == 40);
  for (int l = 0; l < cfg.num_hidden_layers; ++l)
    for (int h = 0; h < cfg.num_key_value_heads; ++h) CHECK(rc.row(0).eviction(l)->held(h) == 10);
}

TEST_CASE("shipped templates run on the reference model (kvcal-ref-v1)") {
  const std::string ref = std::string(KVCAL_SOURCE_DIR) + "/data/models/kvcal-ref-v1";
  if (!std::ifstream(ref + "/config.json")) {
    MESSAGE("data/models/kvcal-ref-v1 absent: skipped");
    return;
  }
  test::scratch_dir dir;
  const llama_model m = llama_model::load(ref, at::kCPU, at::kFloat);
  for (const std::string name : {"kivi-2", "kivi-4", "h2o", "streaming-llm", "mlsys-conservative",
                                 "mlsys-aggressive", "mlsys-extreme"}) {
    CAPTURE(name);
    export_params p;
    p.template_name = name;
    p.model_dir = ref;
    p.out = dir.file(name + ".safetensors");
    const export_result ex = export_preset(p);
    runtime_cache rc(m.config(), p.out, 1);
    const at::Tensor logits = run_model(m, rc, 160, 176);
    CHECK(logits.isfinite().all().item<bool>());
    CHECK(rc.length() == 176);
    const cache_stats st = rc.stats();
    CHECK(double(st.bytes_used) == account_bytes(ex.recipe, 176).total());
    if (name == "h2o" || name.rfind("mlsys", 0) == 0) {
      CHECK(st.tokens.back() < 176);                     // really evicted
      CHECK(double(st.bytes_used) < st.fp16_bytes / 2);  // (pages of 64 tokens: held is coarser)
    }
    MESSAGE(name << " at 176 tokens vs fp16: " << st.fp16_bytes / double(st.bytes_used)
                 << "x used, " << st.fp16_bytes / double(st.bytes_held) << "x held");
  }
}

// Quality smoke tables on the reference model (not run by default: `test_eviction --no-skip
// -tc="*quality*"`): teacher-forced NLL of the decode steps through the cache after a prefill,
// per preset. The real table is `kvcal eval --preset` (docs/eval.md); these only check that the
// policies behave sensibly on a real model.
namespace {

struct smoke_result {
  double ppl = 0, ratio = 0;  // ratio: fp16 / bytes used at the end of each window, mean
  std::int64_t reencoded = 0;
};

smoke_result decode_smoke(const llama_model& m, const std::vector<std::int32_t>& all,
                          const std::string& preset, std::int64_t W, std::int64_t prefix,
                          std::int64_t windows) {
  double nll = 0;
  std::int64_t n = 0;
  smoke_result r;
  for (std::int64_t w = 0; w < windows; ++w) {
    runtime_cache rc(m.config(), preset, 1);
    at::Tensor ids =
        at::tensor(std::vector<std::int64_t>(all.begin() + w * W, all.begin() + (w + 1) * W))
            .unsqueeze(0);
    at::Tensor logits = m.forward(ids.narrow(1, 0, prefix), rc);
    for (std::int64_t t = prefix; t < W; ++t) {
      at::Tensor lp = at::log_softmax(logits[0][-1], -1);
      nll -= lp[ids[0][t].item<std::int64_t>()].item<double>();
      ++n;
      if (t + 1 < W) logits = m.forward(ids.narrow(1, t, 1), rc);
    }
    const cache_stats st = rc.stats();
    r.ratio += st.fp16_bytes / double(st.bytes_used) / double(windows);
    r.reencoded += st.reencoded;
  }
  r.ppl = std::exp(nll / double(n));
  return r;
}

}  // namespace

TEST_CASE("quality smoke table on kvcal-ref-v1" * doctest::skip()) {
  const std::string ref = std::string(KVCAL_SOURCE_DIR) + "/data/models/kvcal-ref-v1";
  const llama_model m = llama_model::load(ref, at::kCPU, at::kFloat);
  const tokenizer tok = tokenizer::load(ref + "/tokenizer.json");
  const std::string text = test::read_bytes(std::string(KVCAL_SOURCE_DIR) + "/data/eval.txt");
  const std::vector<std::int32_t> all = tok.encode(text, true);
  const std::int64_t W = 1024, prefix = 256, windows = 2;
  REQUIRE(static_cast<std::int64_t>(all.size()) >= W * windows);
  test::scratch_dir dir;
  const std::vector<std::pair<std::string, std::string>> presets = {
      {"fp16", R"({"name": "fp16", "layer": {"k": "none", "v": "none"}})"},
      {"window 4+252",
       R"({"name": "w", "layer": {"k": "none", "v": "none", "policy": {"window": {"sinks": 4, "recent": 252}}}})"},
      {"window 0+256",
       R"({"name": "w", "layer": {"k": "none", "v": "none", "policy": {"window": {"sinks": 0, "recent": 256}}}})"},
      {"h2o 256",
       R"({"name": "h", "layer": {"k": "none", "v": "none", "policy": {"h2o": {"heavy": 0.5, "recent": 0.5}}}, "budget": {"tokens": 256}})"},
      {"lru 256",
       R"({"name": "l", "layer": {"k": "none", "v": "none", "policy": "lru", "residual": 64}, "budget": {"tokens": 256}})"},
      {"cluster 256 k20",
       R"({"name": "c", "layer": {"k": "none", "v": "none", "policy": {"cluster": {"k": 20}}, "residual": 128}, "budget": {"tokens": 256}})"},
      {"h2o 128",
       R"({"name": "h", "layer": {"k": "none", "v": "none", "policy": {"h2o": {"heavy": 0.5, "recent": 0.5}}}, "budget": {"tokens": 128}})"},
      {"window 4+124",
       R"({"name": "w", "layer": {"k": "none", "v": "none", "policy": {"window": {"sinks": 4, "recent": 124}}}})"},
      {"hybrid 2-bit guard.5 c20 r64 retain .25",
       R"({"name": "x", "layer": {"k": {"quant": {"bits": 2, "group": 32, "axis": "per-channel"}}, "v": {"quant": {"bits": 2, "group": 32, "axis": "per-token"}}, "policy": {"cluster": {"k": 20}}, "guard": 0.5, "residual": 64}, "budget": {"retain": 0.25}})"}};
  for (const auto& [label, js] : presets) {
    export_params p;
    p.recipe_path = dir.file("r.json");
    test::write_bytes(p.recipe_path, js);
    p.model_dir = ref;
    p.out = dir.file("r.safetensors");
    export_preset(p);
    const smoke_result r = decode_smoke(m, all, p.out, W, prefix, windows);
    MESSAGE(label << ": decode PPL " << r.ppl << ", ratio (used) " << r.ratio
                  << ", re-encoded token streams " << r.reencoded);
  }
}

TEST_CASE("quality smoke table at matched bytes on kvcal-ref-v1" * doctest::skip()) {
  const std::string ref = std::string(KVCAL_SOURCE_DIR) + "/data/models/kvcal-ref-v1";
  const llama_model m = llama_model::load(ref, at::kCPU, at::kFloat);
  const tokenizer tok = tokenizer::load(ref + "/tokenizer.json");
  const std::string text = test::read_bytes(std::string(KVCAL_SOURCE_DIR) + "/data/eval.txt");
  const std::vector<std::int32_t> all = tok.encode(text, true);
  const std::int64_t W = 1024, prefix = 256, windows = 2;
  test::scratch_dir dir;
  const std::vector<std::pair<std::string, std::string>> recipes = {
      {"lru",
       R"({"name": "lru", "layer": {"k": "none", "v": "none", "policy": "lru", "residual": 32}, "budget": {"tokens": 256}})"},
      {"cluster",
       R"({"name": "cluster", "layer": {"k": "none", "v": "none", "policy": {"cluster": {"k": 20}}, "residual": 32}, "budget": {"tokens": 256}})"}};
  for (double target : {4.0, 8.0, 12.0}) {
    for (const std::string name : {"streaming-llm", "h2o", "lru", "cluster", "mlsys-conservative",
                                   "mlsys-aggressive", "mlsys-extreme"}) {
      export_params p;
      for (const auto& [rn, js] : recipes)
        if (rn == name) {
          p.recipe_path = dir.file(rn + ".json");
          test::write_bytes(p.recipe_path, js);
        }
      if (p.recipe_path.empty()) p.template_name = name;
      p.model_dir = ref;
      p.out = dir.file("m.safetensors");
      p.context = W;
      p.match_ratio = target;
      export_preset(p);
      const smoke_result r = decode_smoke(m, all, p.out, W, prefix, windows);
      MESSAGE(name << " @" << target << "x: decode PPL " << r.ppl << ", ratio (used) " << r.ratio
                   << ", re-encoded " << r.reencoded);
    }
  }
}

TEST_CASE("matched byte budgets: budgets scaled to a target ratio, pyramid shape kept") {
  preset_recipe r = make_recipe(4, 2, 64);
  for (std::size_t l = 0; l < 4; ++l) {
    r.layers[l].policy = cluster_pol(8);
    r.layers[l].budget = retain_budget(0.4 - 0.1 * double(l));
    r.layers[l].k = quant_method(2, 32, quant_axis::per_channel);
    r.layers[l].v = quant_method(2, 32, quant_axis::per_token);
    r.layers[l].guard = 0.5;
    r.layers[l].residual = 64;
  }
  for (double target : {4.0, 8.0, 12.0}) {
    CAPTURE(target);
    const budget_match m = match_ratio(r, 2048, target);
    CHECK(m.ratio >= target);
    CHECK(m.ratio < target * 1.02);  // the next larger budget falls below it
    CHECK(m.ratio == doctest::Approx(account_bytes(m.recipe, 2048).ratio()));
    const double r0 = m.recipe.layers[0].budget.retain, r3 = m.recipe.layers[3].budget.retain;
    CHECK(r0 / r3 == doctest::Approx(0.4 / 0.1));  // the shape is kept
  }
  preset_recipe h = make_recipe(2, 2, 64);
  for (auto& l : h.layers) {
    l.policy = kind_pol(token_policy_kind::h2o);
    l.budget = tokens_budget(256);
  }
  const budget_match m8 = match_ratio(h, 2048, 8.0);
  CHECK(m8.recipe.layers[0].budget.tokens < 256);
  CHECK(m8.ratio >= 8.0);
  token_policy w = window_pol(4, 1020);
  preset_recipe win = make_recipe(1, 1, 64);
  win.layers[0].policy = w;
  CHECK(match_ratio(win, 4096, 16.0).recipe.layers[0].policy.recent == 252);  // 4 + 252 = 256
  CHECK_THROWS_WITH_AS(match_ratio(make_recipe(1, 1, 64), 2048, 4.0),
                       doctest::Contains("no token budget"), kvcal::error);
  CHECK_THROWS_WITH_AS(match_ratio(h, 2048, 1e6), doctest::Contains("reaches at most"),
                       kvcal::error);
}

TEST_CASE("runtime_cache with eviction: batch rows evict independently, stats summed") {
  const llama_model& m = llama_fixture();
  const model_config& cfg = m.config();
  preset_recipe r;
  r.name = "h2o-batch";
  r.model = fingerprint_of(cfg);
  r.layers.resize(sz(cfg.num_hidden_layers));
  for (auto& lr : r.layers) {
    lr.policy = cluster_pol(2);
    lr.budget = tokens_budget(12);
  }
  runtime_cache rc(cfg, r, {}, 2);
  at::Tensor ids = (at::arange(60, at::TensorOptions().dtype(at::kLong)) * 7 + 1)
                       .remainder(cfg.vocab_size)
                       .reshape({2, 30});
  m.forward(ids.narrow(1, 0, 20), rc);
  for (int t = 20; t < 30; ++t) m.forward(ids.narrow(1, t, 1), rc);
  CHECK(rc.length() == 30);
  const cache_stats st = rc.stats();
  const cache_stats r0 = rc.row(0).stats(), r1 = rc.row(1).stats();
  CHECK(st.index.bytes_used == r0.index.bytes_used + r1.index.bytes_used);
  CHECK(st.centroids.bytes_used == r0.centroids.bytes_used + r1.centroids.bytes_used);
  CHECK(st.bytes_used == r0.bytes_used + r1.bytes_used);
  CHECK(double(r0.bytes_used) == account_bytes(r, 30).total());
  for (int b = 0; b < 2; ++b) CHECK(rc.row(b).eviction(0)->held(0) == 12);
}

TEST_CASE("eviction templates on every fixture architecture (RoPE variants, qwen2 bias, sliding)") {
  test::scratch_dir dir;
  for (const std::string fx : {"llama3-rope", "qwen2", "mistral", "llama-headdim"}) {
    const llama_model m = llama_model::load(fixture_dir(fx), at::kCPU, at::kFloat);
    for (const std::string name : {"h2o", "streaming-llm"}) {
      CAPTURE(fx);
      CAPTURE(name);
      export_params p;
      p.template_name = name;
      p.model_dir = fixture_dir(fx);
      p.out = dir.file(fx + name + ".safetensors");
      const export_result ex = export_preset(p);
      runtime_cache rc(m.config(), p.out, 1);
      const at::Tensor logits = run_model(m, rc, 48, 64);
      CHECK(logits.isfinite().all().item<bool>());
      CHECK(rc.length() == 64);
      CHECK(double(rc.stats().bytes_used) == account_bytes(ex.recipe, 64).total());
    }
  }
}

TEST_CASE("an evicting layer whose budget never binds gives the fp16 cache's logits") {
  for (const std::string fx : {"llama", "llama3-rope", "qwen2", "mistral", "llama-headdim"}) {
    CAPTURE(fx);
    const llama_model m = llama_model::load(fixture_dir(fx), at::kCPU, at::kFloat);
    const model_config& cfg = m.config();
    preset_recipe r;
    r.name = "fp16";
    r.model = fingerprint_of(cfg);
    r.layers.resize(sz(cfg.num_hidden_layers));
    runtime_cache plain(cfg, r, {}, 1);
    const at::Tensor want = run_model(m, plain, 20, 40);
    for (auto& lr : r.layers) {
      lr.policy = kind_pol(token_policy_kind::h2o);
      lr.budget = tokens_budget(1000);
    }
    runtime_cache ev(cfg, r, {}, 1);
    const at::Tensor got = run_model(m, ev, 20, 40);
    CHECK((got - want).abs().max().item<double>() < 1e-4);
  }
}

TEST_CASE("export --match-ratio: the preset's accounting reaches the ratio at --context") {
  test::scratch_dir dir;
  const std::string ref = std::string(KVCAL_SOURCE_DIR) + "/data/models/kvcal-ref-v1";
  if (!std::ifstream(ref + "/config.json")) return;
  for (const std::string name : {"h2o", "streaming-llm", "mlsys-aggressive"}) {
    for (double target : {4.0, 8.0, 12.0}) {
      CAPTURE(name);
      CAPTURE(target);
      export_params p;
      p.template_name = name;
      p.model_dir = ref;
      p.out = dir.file("m.safetensors");
      p.context = 2048;
      p.match_ratio = target;
      export_preset(p);
      const preset_file f(p.out);
      CHECK(f.recipe().name.find("@") != std::string::npos);
      const double ratio = account_bytes(f.recipe(), 2048).ratio();
      CHECK(ratio >= target);
      CHECK(ratio < target * 1.05);
    }
  }
}
