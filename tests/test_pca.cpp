// fit-pca (calibrate/): streaming covariance, eigensolve, rank allocation, the pca.h5 format, the
// command end to end on synthetic captures, bad input, and `kvcal export --pca`.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <cmath>
#include <random>
#include <vector>

#include "calibrate/covariance.h"
#include "calibrate/eigensolve.h"
#include "calibrate/rank_allocation.h"
#include "kernels/common/error.h"
#include "tests/test_util.h"

using namespace kvcal;

namespace {

// n vectors of d floats, correlated, with large means (cancellation would show).
std::vector<float> random_rows(std::int64_t n, std::int64_t d, unsigned seed, float mean_scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0, 1);
  std::vector<float> mix(static_cast<size_t>(d * d)), mu(static_cast<size_t>(d));
  for (auto& v : mix) v = g(rng) / std::sqrt(static_cast<float>(d));
  for (auto& v : mu) v = mean_scale * g(rng);
  std::vector<float> x(static_cast<size_t>(n * d)), z(static_cast<size_t>(d));
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < d; ++j) z[j] = g(rng) * (1.0f + 3.0f * (j % 7 == 0));
    for (std::int64_t j = 0; j < d; ++j) {
      float s = mu[j];
      for (std::int64_t k = 0; k < d; ++k) s += mix[j * d + k] * z[k];
      x[i * d + j] = s;
    }
  }
  return x;
}

double max_rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double scale = 0, m = 0;
  for (double v : b) scale = std::max(scale, std::abs(v));
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m / scale;
}

}  // namespace

TEST_CASE("covariance: many blocks == one pass == naive two-pass") {
  const std::int64_t n = 1003, d = 17;
  const std::vector<float> x = random_rows(n, d, 1, 50.0f);
  cov_stats one(d), many(d);
  accumulate_block_cpu(one, x.data(), n, d, d);
  for (std::int64_t t = 0; t < n;) {
    const std::int64_t b = std::min<std::int64_t>(n - t, 1 + (t * 7) % 97);  // awkward sizes
    accumulate_block_cpu(many, x.data() + t * d, b, d, d);
    t += b;
  }
  const cov_stats ref = two_pass_stats(x.data(), n, d, d);
  CHECK(one.count == n);
  CHECK(many.count == n);
  CHECK(max_rel_diff(many.mean, ref.mean) < 1e-12);
  CHECK(max_rel_diff(one.m2, ref.m2) < 1e-12);
  CHECK(max_rel_diff(many.m2, ref.m2) < 1e-12);
  // Merging two partial accumulators (as from two captures) is the same again.
  cov_stats a(d), b(d);
  accumulate_block_cpu(a, x.data(), 400, d, d);
  accumulate_block_cpu(b, x.data() + 400 * d, n - 400, d, d);
  a.merge(b);
  CHECK(max_rel_diff(a.m2, ref.m2) < 1e-12);
  // Uncentred second moment = M2 / n + mean mean^T.
  const std::vector<double> c0 = many.covariance(false);
  double direct = 0;
  for (std::int64_t i = 0; i < n; ++i) direct += double(x[i * d + 3]) * x[i * d + 5];
  CHECK(std::abs(c0[3 * d + 5] - direct / n) < 1e-9 * std::abs(direct / n) + 1e-9);
}

TEST_CASE("covariance: per-head and pooled layouts of [rows, n_kv, d]") {
  const std::int64_t rows = 211, n_kv = 3, d = 8;
  const std::vector<float> x = random_rows(rows * n_kv, d, 2, 3.0f);  // reinterpreted as rows
  std::vector<cov_stats> heads(n_kv, cov_stats(d)), pooled(1, cov_stats(d));
  accumulate_rows_cpu(heads, x.data(), rows, n_kv, d);
  accumulate_rows_cpu(pooled, x.data(), rows, n_kv, d);
  for (std::int64_t h = 0; h < n_kv; ++h) {
    const cov_stats ref = two_pass_stats(x.data() + h * d, rows, d, n_kv * d);
    CHECK(max_rel_diff(heads[h].m2, ref.m2) < 1e-12);
  }
  const cov_stats ref = two_pass_stats(x.data(), rows * n_kv, d, d);
  CHECK(pooled[0].count == rows * n_kv);
  CHECK(max_rel_diff(pooled[0].m2, ref.m2) < 1e-12);
}

TEST_CASE("covariance: heads accumulated in parallel == in sequence") {
  const std::int64_t rows = 1500, n_kv = 4, d = 32;  // rows x d x d >= 2^20: parallel heads
  const std::vector<float> x = random_rows(rows * n_kv, d, 9, 1.0f);
  std::vector<cov_stats> par(n_kv, cov_stats(d));
  accumulate_rows_cpu(par, x.data(), rows, n_kv, d);
  for (std::int64_t h = 0; h < n_kv; ++h) {
    cov_stats seq(d);
    accumulate_block_cpu(seq, x.data() + h * d, rows, d, n_kv * d);
    CHECK(par[h].m2 == seq.m2);  // bit-identical
    CHECK(par[h].mean == seq.mean);
  }
}

TEST_CASE("eigensolve: known spectrum, descending, deterministic sign") {
  const std::int64_t d = 24;
  std::mt19937 rng(3);
  std::normal_distribution<double> g(0, 1);
  Eigen::MatrixXd q =
      Eigen::HouseholderQR<Eigen::MatrixXd>(Eigen::MatrixXd::NullaryExpr(d, d, [&]() {
        return g(rng);
      })).householderQ();
  Eigen::VectorXd lam(d);
  for (int i = 0; i < d; ++i) lam[i] = std::pow(0.7, i) * 10;
  const Eigen::MatrixXd c = q * lam.asDiagonal() * q.transpose();
  std::vector<double> a(static_cast<size_t>(d * d));
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < d; ++j) a[i * d + j] = c(i, j);
  const eig_result r = eigh_cpu(a.data(), d);
  for (int i = 0; i < d; ++i) CHECK(r.values[i] == doctest::Approx(lam[i]).epsilon(1e-10));
  for (int j = 0; j < d; ++j) {
    // Column j is +-q.col(j), with its largest-|.| entry positive.
    double dot = 0, best = 0;
    for (int i = 0; i < d; ++i) {
      dot += r.vectors[i * d + j] * q(i, j);
      if (std::abs(r.vectors[i * d + j]) > std::abs(best)) best = r.vectors[i * d + j];
    }
    CHECK(std::abs(std::abs(dot) - 1) < 1e-9);
    CHECK(best > 0);
  }
  // The sign convention makes the result independent of the input's orientation.
  std::vector<double> a2 = a;
  const eig_result r2 = eigh_batched({a2}, d, eig_device::cpu)[0];
  CHECK(max_rel_diff(r2.vectors, r.vectors) < 1e-12);
}

TEST_CASE("eigensolve: full-rank PCA reconstructs exactly") {
  const std::int64_t n = 300, d = 16;
  const std::vector<float> x = random_rows(n, d, 4, 5.0f);
  cov_stats s(d);
  accumulate_block_cpu(s, x.data(), n, d, d);
  const eig_result r = eigh_cpu(s.covariance(true).data(), d);
  double err = 0, scale = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    std::vector<double> z(d, 0.0);
    for (std::int64_t j = 0; j < d; ++j)
      for (std::int64_t k = 0; k < d; ++k)
        z[j] += r.vectors[k * d + j] * (x[i * d + k] - s.mean[k]);
    for (std::int64_t k = 0; k < d; ++k) {
      double y = s.mean[k];
      for (std::int64_t j = 0; j < d; ++j) y += r.vectors[k * d + j] * z[j];
      err = std::max(err, std::abs(y - x[i * d + k]));
      scale = std::max(scale, std::abs(double(x[i * d + k])));
    }
  }
  CHECK(err < 1e-10 * scale);
}

TEST_CASE("rank allocation: fixed, energy, budget exact and never worse than uniform") {
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> u(0.3, 0.95);
  std::vector<rank_block> blocks;
  const int d = 32;
  for (int b = 0; b < 12; ++b) {
    rank_block blk;
    const double decay = u(rng), scale = 1 + 10 * u(rng);
    for (int i = 0; i < d; ++i) blk.eigenvalues.push_back(scale * std::pow(decay, i));
    blocks.push_back(blk);
  }
  SUBCASE("fixed") {
    const rank_plan p = ranks_fixed(blocks, 8, 16);
    CHECK(p.bits_per_token == 12 * 8 * 16);
    CHECK_THROWS_WITH_AS(ranks_fixed(blocks, d, 16), doctest::Contains("[1, head_dim)"),
                         kvcal::error);
    CHECK_THROWS_AS(ranks_fixed(blocks, 0, 16), kvcal::error);
    CHECK_THROWS_WITH_AS(ranks_fixed(blocks, 4, 5), doctest::Contains("latent bits 5"),
                         kvcal::error);
  }
  SUBCASE("energy") {
    const rank_plan p = ranks_for_energy(blocks, 0.9, 16);
    for (size_t b = 0; b < blocks.size(); ++b) {
      CHECK(explained_energy(blocks[b].eigenvalues, p.ranks[b]) >= 0.9);
      if (p.ranks[b] > 1) CHECK(explained_energy(blocks[b].eigenvalues, p.ranks[b] - 1) < 0.9);
    }
    CHECK(ranks_for_energy(blocks, 1.0, 16).ranks[0] == d);
    CHECK_THROWS_WITH_AS(ranks_for_energy(blocks, 0.0, 16), doctest::Contains("(0, 1]"),
                         kvcal::error);
    CHECK_THROWS_AS(ranks_for_energy(blocks, 1.5, 16), kvcal::error);
  }
  SUBCASE("budget, every latent width") {
    for (int bits : {16, 8, 4}) {
      for (double bytes : {30.0, 100.5, 257.0, 333.25, 700.0}) {
        CAPTURE(bits);
        CAPTURE(bytes);
        const std::int64_t budget = static_cast<std::int64_t>(bytes * 8);
        const std::int64_t min_bits = plan_bits(blocks, std::vector<int>(12, 1), bits);
        if (min_bits > budget) {
          CHECK_THROWS_WITH_AS(ranks_for_budget(blocks, bytes, bits),
                               doctest::Contains("below the minimum"), kvcal::error);
          continue;
        }
        const rank_plan p = ranks_for_budget(blocks, bytes, bits);
        CHECK(p.bits_per_token <= budget);
        // Exact: no block could take one more component.
        bool all_full = true;
        for (int r : p.ranks) all_full = all_full && r == d;
        if (!all_full) CHECK(budget - p.bits_per_token < bits);
        CHECK(p.bits_per_token == plan_bits(blocks, p.ranks, bits));
        CHECK(p.uniform_rank >= 1);
        CHECK(p.discarded <= p.uniform_discarded + 1e-12);
        // Brute-force check of the accounting of uniform ranks.
        const std::int64_t per_rank = bits, extra = bits < 16 ? 32 : 0;
        CHECK(plan_bits(blocks, std::vector<int>(12, p.uniform_rank), bits) ==
              12 * (p.uniform_rank * per_rank + extra));
      }
    }
  }
  SUBCASE("layer granularity: blocks shared by several heads") {
    for (auto& b : blocks) b.heads = 4;
    const rank_plan p = ranks_for_budget(blocks, 500, 8);
    CHECK(p.bits_per_token <= 4000);
    CHECK(4000 - p.bits_per_token < 4 * 8);
    CHECK(p.discarded <= p.uniform_discarded + 1e-12);
  }
}

// ---- Synthetic captures, the command end to end, bad input
// ---------------------------------------

#include <nlohmann/json.hpp>
#include <sstream>

#include "calibrate/h5_array.h"
#include "calibrate/pca_fit.h"
#include "calibrate/pca_format.h"
#include "calibrate/pca_report.h"
#include "cli/app.h"

namespace {

struct synth {
  std::int64_t n_layers = 2, n_kv = 2, d = 16, n_tokens = 300, rows = 320;  // rows > n_tokens
  std::string dtype = "float32";
  std::string model_type = "llama";
  unsigned seed = 7;
  bool with_k_rope = true;
  std::string model;                 // fingerprint JSON; empty: made up from the fields above
  std::vector<std::int64_t> layers;  // recorded layers (attribute `layers`); empty: all
  // Poison: NaN at (layer, head, token) of v.
  std::int64_t nan_layer = -1, nan_head = 0, nan_token = 0;
};

std::string model_json(const synth& s) {
  if (!s.model.empty()) return s.model;
  return nlohmann::json{{"model_type", s.model_type},
                        {"n_layers", s.n_layers},
                        {"n_kv_heads", s.n_kv},
                        {"head_dim", s.d},
                        {"rope", {{"theta", 10000.0}, {"type", "default"}}},
                        {"config_sha256", std::string(64, 'a')}}
      .dump();
}

// Writes a capture in the fixed layout: /layers/L/{k,k_rope,v} [rows, n_kv, d], rows past n_tokens
// hold NaN (they must never be read).
void write_capture(const std::string& path, const synth& s) {
  h5_file f = h5_file::create(path);
  f.set_attr("format", std::string("kvcal.capture"));
  f.set_attr("version", std::int64_t{1});
  f.set_attr("model", model_json(s));
  f.set_attr("n_layers", s.n_layers);
  f.set_attr("n_kv_heads", s.n_kv);
  f.set_attr("n_heads", s.n_kv * 2);
  f.set_attr("head_dim", s.d);
  f.set_attr("n_tokens", s.n_tokens);
  f.set_attr("dtype", s.dtype);
  f.set_attr("record", std::string("[\"k\",\"k_rope\",\"v\"]"));
  std::vector<std::string> targets = {"k", "v"};
  if (s.with_k_rope) targets.push_back("k_rope");
  const h5_dtype t = s.dtype == "float16" ? h5_dtype::f16 : h5_dtype::f32;
  unsigned seed = s.seed;
  std::vector<std::int64_t> layers = s.layers;
  if (layers.empty())
    for (std::int64_t l = 0; l < s.n_layers; ++l) layers.push_back(l);
  else
    f.set_attr("layers", nlohmann::json(layers).dump());
  for (std::int64_t l : layers)
    for (const auto& tg : targets) {
      const std::string p = "/layers/" + std::to_string(l) + "/" + tg;
      h5_create_dataset(f, p, t, {s.rows, s.n_kv, s.d}, 64);
      std::vector<float> x(static_cast<size_t>(s.rows * s.n_kv * s.d),
                           std::numeric_limits<float>::quiet_NaN());
      for (std::int64_t h = 0; h < s.n_kv; ++h) {
        const std::vector<float> r = random_rows(s.n_tokens, s.d, ++seed, 2.0f);
        for (std::int64_t i = 0; i < s.n_tokens; ++i)
          for (std::int64_t j = 0; j < s.d; ++j)
            x[static_cast<size_t>((i * s.n_kv + h) * s.d + j)] = r[i * s.d + j];
      }
      if (tg == "v" && l == s.nan_layer)
        x[static_cast<size_t>((s.nan_token * s.n_kv + s.nan_head) * s.d + 3)] =
            std::numeric_limits<float>::infinity();
      h5_write_rows(f, p, 0, s.rows, x.data());
    }
}

int run_cli(const std::vector<std::string>& args, std::string* out, std::string* err) {
  std::ostringstream o, e;
  const int rc = kvcal::cli::run(args, o, e);
  *out = o.str();
  *err = e.str();
  return rc;
}

}  // namespace

TEST_CASE("fit-pca end to end: two captures (fp16 + fp32), CPU, reference covariance") {
  kvcal::test::scratch_dir dir;
  synth a, b;
  a.dtype = "float16";
  b.seed = 99;
  b.n_tokens = 150;
  b.rows = 150;
  write_capture(dir.file("a.h5"), a);
  write_capture(dir.file("b.h5"), b);
  pca_fit_params p;
  p.captures = {dir.file("a.h5"), dir.file("b.h5")};
  p.out = dir.file("pca.h5");
  p.targets = {"k", "v", "k_rope"};
  p.block_rows = 37;  // many blocks, not aligned with the chunks
  p.device = "cpu";
  const pca_fit_result r = run_pca_fit(p);
  CHECK(r.file.n_tokens == 450);
  const pca_file f = read_pca_file(p.out);
  REQUIRE(f.blocks.size() == 3 * 2 * 2);
  CHECK(f.sources.size() == 2);
  CHECK(f.sources[0].sha256.size() == 64);
  CHECK(f.sources[1].n_tokens == 150);
  CHECK(nlohmann::json::parse(f.model_json) == nlohmann::json::parse(model_json(a)));
  CHECK(kvcal::test::file_exists(dir.file("pca.svg")));
  CHECK(kvcal::test::read_bytes(dir.file("pca.svg")).rfind("<svg", 0) == 0);
  CHECK_FALSE(kvcal::test::file_exists(dir.file("pca.h5.partial")));

  // Reference: the valid rows of both captures, as stored (fp16 rounding included), two-pass.
  const std::int64_t d = a.d, n_kv = a.n_kv;
  for (const char* tg : {"v", "k_rope"}) {
    for (std::int64_t l = 0; l < 2; ++l) {
      std::vector<float> all;
      for (const auto& [path, n] :
           {std::pair{dir.file("a.h5"), a.n_tokens}, std::pair{dir.file("b.h5"), b.n_tokens}}) {
        h5_file cf = h5_file::open_read(path);
        std::vector<float> x(static_cast<size_t>(n * n_kv * d));
        h5_read_rows(cf, "/layers/" + std::to_string(l) + "/" + tg, 0, n, x.data());
        all.insert(all.end(), x.begin(), x.end());
      }
      for (std::int64_t h = 0; h < n_kv; ++h) {
        const cov_stats ref = two_pass_stats(all.data() + h * d, 450, d, n_kv * d);
        const eig_result e = eigh_cpu(ref.covariance(true).data(), d);
        const pca_block* blk = f.find(tg, l, h);
        REQUIRE(blk != nullptr);
        CHECK(blk->count == 450);
        CHECK(max_rel_diff(blk->mean, ref.mean) < 1e-10);
        CHECK(max_rel_diff(blk->eigenvalues, e.values) < 1e-10);
        CHECK(max_rel_diff(blk->basis, e.vectors) < 1e-6);
        CHECK(blk->rank >= 1);
        CHECK(explained_energy(blk->eigenvalues, static_cast<int>(blk->rank)) >= 0.99);
      }
    }
  }

  // inspect: the report, with the pre/post-RoPE comparison.
  std::string out, err;
  CHECK(run_cli({"inspect", p.out}, &out, &err) == 0);
  if (std::getenv("KVCAL_TEST_SHOW")) MESSAGE(out);
  CHECK(out.find("kvcal PCA file") != std::string::npos);
  CHECK(out.find("Explained variance vs rank") != std::string::npos);
  CHECK(out.find("Pre- vs post-RoPE K") != std::string::npos);
  CHECK(out.find("Spectrum spread") != std::string::npos);
}

TEST_CASE("fit-pca: CLI, layer granularity, byte budget, max-tokens, uncentred") {
  kvcal::test::scratch_dir dir;
  synth a;
  write_capture(dir.file("a.h5"), a);
  std::string out, err;
  SUBCASE("layer granularity + budget") {
    // K and V, 2 layers, shared bases used by 2 heads, 8-bit latents: rank 1 everywhere costs
    // 2 x 2 x 2 x (8 + 32) bits = 40 bytes.
    REQUIRE(
        run_cli({"fit-pca", "--capture", dir.file("a.h5"), "--out", dir.file("p.h5"),
                 "--granularity", "layer", "--bytes-per-token", "75", "--latent-bits", "8", "-q"},
                &out, &err) == 0);
    const pca_file f = read_pca_file(dir.file("p.h5"));
    REQUIRE(f.blocks.size() == 4);
    CHECK(f.find("v", 1, 0) == f.find("v", 1, 1));
    CHECK(f.blocks[0].head == -1);
    CHECK(f.blocks[0].count == a.n_tokens * a.n_kv);
    std::int64_t bits = 0;
    for (const auto& b : f.blocks) bits += 2 * (b.rank * 8 + 32);
    CHECK(bits <= 600);
    CHECK(600 - bits < 16);
    CHECK(nlohmann::json::parse(f.rank_rule_json)["bits"] == bits);
  }
  SUBCASE("fixed rank, max tokens, uncentred") {
    REQUIRE(
        run_cli({"fit-pca", "--capture", dir.file("a.h5"), "--out", dir.file("p.h5"), "--rank", "5",
                 "--max-tokens", "100", "--center", "off", "--target", "v", "--no-svg", "-q"},
                &out, &err) == 0);
    const pca_file f = read_pca_file(dir.file("p.h5"));
    CHECK(f.n_tokens == 100);
    CHECK_FALSE(f.centered);
    CHECK(f.targets == std::vector<std::string>{"v"});
    for (const auto& b : f.blocks) {
      CHECK(b.rank == 5);
      CHECK(b.count == 100);
      for (double m : b.mean) CHECK(m == 0.0);
    }
    CHECK_FALSE(kvcal::test::file_exists(dir.file("p.svg")));
  }
  SUBCASE("captures of a subset of layers") {
    synth b;
    b.n_layers = 4;
    b.layers = {1, 3};
    write_capture(dir.file("b.h5"), b);
    REQUIRE(run_cli({"fit-pca", "--capture", dir.file("b.h5"), "--out", dir.file("p.h5"), "-q"},
                    &out, &err) == 0);
    const pca_file f = read_pca_file(dir.file("p.h5"));
    CHECK(f.n_layers == 4);
    CHECK(f.layers == std::vector<std::int64_t>{1, 3});
    CHECK(f.blocks.size() == 2 * 2 * 2);
    CHECK(f.find("v", 3, 1) != nullptr);
    CHECK(f.find("v", 0, 0) == nullptr);
    CHECK(run_cli({"inspect", dir.file("p.h5")}, &out, &err) == 0);
    CHECK(out.find("(2 fitted)") != std::string::npos);
    // Mixing it with a capture of every layer is refused.
    CHECK(run_cli({"fit-pca", "--capture", dir.file("b.h5"), dir.file("a.h5"), "--out",
                   dir.file("q.h5"), "-q"},
                  &out, &err) == 1);
  }
  SUBCASE("--help lists the defaults") {
    CHECK(run_cli({"fit-pca", "--help"}, &out, &err) == 0);
    CHECK(out.find("--bytes-per-token") != std::string::npos);
    CHECK(out.find("kv-head") != std::string::npos);
  }
}

TEST_CASE("fit-pca: bad input, one clear error each") {
  kvcal::test::scratch_dir dir;
  synth a;
  write_capture(dir.file("a.h5"), a);
  pca_fit_params p;
  p.captures = {dir.file("a.h5")};
  p.out = dir.file("pca.h5");
  p.device = "cpu";
  SUBCASE("captures of different models: both fingerprints printed") {
    synth b;
    b.model_type = "qwen2";
    write_capture(dir.file("b.h5"), b);
    p.captures.push_back(dir.file("b.h5"));
    try {
      run_pca_fit(p);
      FAIL("no error");
    } catch (const kvcal::error& e) {
      const std::string m = e.what();
      CHECK(m.find("different models") != std::string::npos);
      CHECK(m.find("\"model_type\":\"llama\"") != std::string::npos);
      CHECK(m.find("\"model_type\":\"qwen2\"") != std::string::npos);
    }
  }
  SUBCASE("NaN/Inf: layer, head and token named") {
    synth b;
    b.nan_layer = 1;
    b.nan_head = 1;
    b.nan_token = 211;
    write_capture(dir.file("bad.h5"), b);
    p.captures = {dir.file("bad.h5")};
    p.block_rows = 100;
    CHECK_THROWS_WITH_AS(run_pca_fit(p),
                         doctest::Contains("Inf in v of layer 1, KV head 1, token 211 (block of "
                                           "tokens [200, 300))"),
                         kvcal::error);
    CHECK_FALSE(kvcal::test::file_exists(p.out));
  }
  SUBCASE("rank >= head_dim") {
    p.rank = 16;
    CHECK_THROWS_WITH_AS(run_pca_fit(p), doctest::Contains("[1, head_dim) = [1, 16)"),
                         kvcal::error);
  }
  SUBCASE("energy outside (0, 1]") {
    p.energy = 1.5;
    CHECK_THROWS_WITH_AS(run_pca_fit(p), doctest::Contains("must be in (0, 1]"), kvcal::error);
    std::string out, err;
    CHECK(run_cli({"fit-pca", "--capture", dir.file("a.h5"), "--out", p.out, "--energy", "0"}, &out,
                  &err) == 2);
    CHECK(err.find("(0, 1]") != std::string::npos);
  }
  SUBCASE("two rank rules") {
    p.rank = 4;
    p.energy = 0.9;
    CHECK_THROWS_WITH_AS(run_pca_fit(p), doctest::Contains("at most one of"), kvcal::error);
  }
  SUBCASE("missing / corrupt / not a capture / target not captured") {
    p.captures = {dir.file("nope.h5")};
    CHECK_THROWS_WITH_AS(run_pca_fit(p), doctest::Contains("nope.h5: no such file"), kvcal::error);
    const std::string bytes = kvcal::test::read_bytes(dir.file("a.h5"));
    kvcal::test::write_bytes(dir.file("cut.h5"), bytes.substr(0, bytes.size() / 2));
    p.captures = {dir.file("cut.h5")};
    CHECK_THROWS_AS(run_pca_fit(p), kvcal::error);
    {
      h5_file f = h5_file::create(dir.file("other.h5"));
      f.set_attr("format", std::string("kvcal.pca"));
    }
    p.captures = {dir.file("other.h5")};
    CHECK_THROWS_WITH_AS(run_pca_fit(p), doctest::Contains("expected 'kvcal.capture'"),
                         kvcal::error);
    synth c;
    c.with_k_rope = false;
    write_capture(dir.file("c.h5"), c);
    p.captures = {dir.file("c.h5")};
    p.targets = {"k_rope"};
    CHECK_THROWS_WITH_AS(run_pca_fit(p), doctest::Contains("missing dataset '/layers/0/k_rope'"),
                         kvcal::error);
  }
  SUBCASE("pca.h5 reader: wrong format, newer version") {
    run_pca_fit(p);
    {
      h5_file f = h5_file::open_rw(p.out);
      f.set_attr("version", std::int64_t{2});
    }
    CHECK_THROWS_WITH_AS(read_pca_file(p.out), doctest::Contains("version 2, newer than"),
                         kvcal::error);
    CHECK_FALSE(is_pca_file(dir.file("a.h5")));
  }
}

// ---- kvcal export --pca ----------------------------------------------------------------------

#include "presets/preset_export.h"
#include "runtime/preset.h"

namespace {

// A model folder with config.json matching `s`, and s.model set to its fingerprint.
std::string make_model(const kvcal::test::scratch_dir& dir, synth& s) {
  const std::string folder = dir.file("model");
  REQUIRE(std::system(("mkdir -p '" + folder + "'").c_str()) == 0);
  nlohmann::json c{{"model_type", "llama"},
                   {"vocab_size", 1000},
                   {"hidden_size", 4 * s.n_kv * s.d},
                   {"intermediate_size", 64},
                   {"num_hidden_layers", s.n_layers},
                   {"num_attention_heads", 2 * s.n_kv},
                   {"num_key_value_heads", s.n_kv},
                   {"head_dim", s.d},
                   {"rms_norm_eps", 1e-6},
                   {"max_position_embeddings", 4096},
                   {"rope_theta", 10000.0},
                   {"hidden_act", "silu"}};
  kvcal::test::write_bytes(folder + "/config.json", c.dump(2));
  const model_config cfg = read_model_config(folder + "/config.json");
  const model_fingerprint fp = fingerprint_of(cfg);
  s.model = nlohmann::json{{"model_type", fp.model_type},   {"n_layers", fp.n_layers},
                           {"n_kv_heads", fp.n_kv_heads},   {"head_dim", fp.head_dim},
                           {"rope", rope_to_json(fp.rope)}, {"config_sha256", fp.config_sha256}}
                .dump();
  return folder;
}

}  // namespace

TEST_CASE("export --pca: knlp-v-pca-int8 takes ranks, bases and means from pca.h5") {
  kvcal::test::scratch_dir dir;
  synth s;
  s.n_layers = 3;
  const std::string model = make_model(dir, s);
  write_capture(dir.file("cap.h5"), s);
  pca_fit_params fp;
  fp.captures = {dir.file("cap.h5")};
  fp.out = dir.file("pca.h5");
  fp.energy = 0.9;
  fp.latent_bits = 8;
  fp.device = "cpu";
  run_pca_fit(fp);
  const pca_file pf = read_pca_file(fp.out);

  export_params p;
  p.template_name = "knlp-v-pca-int8";
  p.model_dir = model;
  p.pca = fp.out;
  p.out = dir.file("knlp.safetensors");
  const export_result r = export_preset(p);
  CHECK(r.fixed_bytes > 0);
  preset_file preset(p.out);
  const preset_recipe& rec = preset.recipe();
  const std::int64_t d = s.d;
  for (std::int64_t l = 0; l < s.n_layers; ++l)
    for (std::int64_t h = 0; h < s.n_kv; ++h) {
      const pca_block* b = pf.find("v", l, h);
      REQUIRE(b != nullptr);
      const kv_method& m = rec.layers[l].v_of(static_cast<size_t>(h));
      CHECK(m.kind == kv_method_kind::pca);
      CHECK(m.pca.rank == b->rank);
      CHECK(m.pca.latent_bits == 8);
      CHECK(rec.layers[l].k_of(static_cast<size_t>(h)).kind == kv_method_kind::none);
      const std::string prefix =
          "layers." + std::to_string(l) + ".v.heads." + std::to_string(h) + ".pca.";
      const tensor_view& basis = preset.tensors().at(prefix + "basis");
      REQUIRE(basis.shape == std::vector<std::int64_t>{b->rank, d});
      const std::vector<float> bv = to_float(basis);
      for (std::int64_t j = 0; j < b->rank; ++j)
        for (std::int64_t i = 0; i < d; ++i)
          CHECK(bv[j * d + i] == doctest::Approx(b->basis[i * d + j]).epsilon(1e-6));
      const std::vector<float> mv = to_float(preset.tensors().at(prefix + "mean"));
      for (std::int64_t i = 0; i < d; ++i)
        CHECK(mv[i] == doctest::Approx(b->mean[i]).epsilon(1e-6));
    }
  // A recipe with its own rank keeps it.
  kvcal::test::write_bytes(
      dir.file("r.json"),
      R"({"name": "v-pca-4", "layer": {"k": {"pca": {"rank": 4}}, "v": "none", "policy": "full"}})");
  p.template_name.clear();
  p.recipe_path = dir.file("r.json");
  p.out = dir.file("r.safetensors");
  export_preset(p);
  preset_file pr(p.out);
  CHECK(pr.tensors().at("layers.2.k.heads.1.pca.basis").shape == std::vector<std::int64_t>{4, d});
}

TEST_CASE("export --pca: wrong model, missing target, no PCA in the recipe") {
  kvcal::test::scratch_dir dir;
  synth s;
  const std::string model = make_model(dir, s);
  write_capture(dir.file("cap.h5"), s);
  pca_fit_params fp;
  fp.captures = {dir.file("cap.h5")};
  fp.out = dir.file("pca.h5");
  fp.targets = {"k"};
  fp.device = "cpu";
  run_pca_fit(fp);
  export_params p;
  p.model_dir = model;
  p.pca = fp.out;
  p.out = dir.file("x.safetensors");
  p.template_name = "knlp-v-pca-int8";
  CHECK_THROWS_WITH_AS(export_preset(p), doctest::Contains("no V basis for layer 0, KV head 0"),
                       kvcal::error);
  p.template_name = "fp16";
  CHECK_THROWS_WITH_AS(export_preset(p), doctest::Contains("the recipe uses no PCA method"),
                       kvcal::error);
  // A PCA file of another model.
  synth other;
  write_capture(dir.file("other.h5"), other);
  fp.captures = {dir.file("other.h5")};
  fp.targets = {"v"};
  fp.out = dir.file("other_pca.h5");
  run_pca_fit(fp);
  p.pca = fp.out;
  p.template_name = "knlp-v-pca-int8";
  CHECK_THROWS_WITH_AS(export_preset(p), doctest::Contains("model fingerprint: config_sha256 is"),
                       kvcal::error);
  CHECK_FALSE(kvcal::test::file_exists(p.out));
}
