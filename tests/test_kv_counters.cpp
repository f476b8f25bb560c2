// The GPU packed cache's step counters (kernels/cuda/kv_counters.h), the host / device rule the
// CUDA-graph-safe decode step advances on the device: against the formula gpu_packed_cache used
// on the host before (rest = max(0, n - residual), K in whole groups) and against a naive
// token-by-token window; the one-token step's ranges fit the fixed grid bounds (one K block, one
// V token); the adaptive (compress_after) and V-only rules against the CPU cache's compress();
// the eviction counters keep R(seen) rows, the host mirror's rule.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/cuda/kv_counters.h"

namespace {

// The pre-issue-11 host arithmetic of gpu_packed_cache::append, verbatim.
void old_rows(std::int64_t n, std::int64_t kc, std::int64_t vc, std::int64_t t, int residual,
              int group, bool quant, std::int64_t* out) {
  const std::int64_t n2 = n + t;
  const std::int64_t rest = std::max<std::int64_t>(0, n2 - residual);
  const std::int64_t k2 = quant ? rest / group * group : 0, v2 = quant ? rest : 0;
  const std::int64_t vals[8] = {n, kc, k2, vc, v2, n2, k2, v2};
  std::copy(vals, vals + 8, out);
}

}  // namespace

TEST_CASE("kv step counters = the old host formula and a naive window, in fixed bounds") {
  for (bool quant : {true, false})
    for (int residual : {0, 1, 32, 128})
      for (int group : {32, 64, 128})
        for (std::int64_t piece : {1, 7, 100}) {
          CAPTURE(quant);
          CAPTURE(residual);
          CAPTURE(group);
          CAPTURE(piece);
          // Naive: the newest `residual` tokens stay fp16; V leaves one token at a time, K one
          // whole group once all of it is older than the window.
          std::int64_t n = 0, kc = 0, vc = 0, nk = 0, nv = 0;
          while (n < 700) {
            const std::int64_t t = piece;
            int rows[kvcal::kv_ctr_rows];
            kvcal::kv_step_rows(rows, n, kc, vc, t, residual, group, quant);
            std::int64_t want[8];
            old_rows(n, kc, vc, t, residual, group, quant, want);
            for (int r = 0; r < kvcal::kv_ctr_rows; ++r) REQUIRE(rows[r] == want[r]);
            n += t;
            if (quant) {
              while (n - nv > residual) ++nv;
              while (nk + group <= n - residual) nk += group;
            }
            REQUIRE(rows[kvcal::kv_n_new] == n);
            REQUIRE(rows[kvcal::kv_kc_new] == nk);
            REQUIRE(rows[kvcal::kv_vc_new] == nv);
            REQUIRE(kvcal::kv_k_compressed(n, residual, group, quant) == nk);
            REQUIRE(kvcal::kv_v_compressed(n, residual, quant) == nv);
            if (t == 1) {  // a decode step: at most one K block and one V token
              const int dk = rows[kvcal::kv_k_to] - rows[kvcal::kv_k_from];
              const int dv = rows[kvcal::kv_v_to] - rows[kvcal::kv_v_from];
              REQUIRE((dk == 0 || dk == group));
              REQUIRE((dv == 0 || dv == 1));
              // the fp16 ring (residual + group + piece rows) holds every uncompressed token
              if (quant) REQUIRE(n - std::min(nk, nv) <= residual + group);
            }
            kc = rows[kvcal::kv_kc_new];
            vc = rows[kvcal::kv_vc_new];
          }
        }
}

// The adaptive (knlp) and V-only (latent V with fp16 K) rules against the CPU cache's compress()
// (runtime/compressed_cache.cpp), written out naively: after each append of t tokens, nothing
// while n <= compress_after, else each stream compresses whole blocks of what lies beyond the
// window (K blocks of `group`, V one token). The decode step's ranges stay inside
// kv_step_max_k_blocks / kv_step_max_v_tokens (the fixed grid bounds), and the crossing of
// compress_after really needs them (more than one token at once).
TEST_CASE("kv step counters: adaptive compress_after and V-only rules = the CPU cache's compress") {
  struct rule_case {
    int residual, group;
    bool k_quant;
    std::int64_t compress_after;
  };
  for (const rule_case rc :
       {rule_case{256, 32, false, 512}, rule_case{256, 32, true, 512}, rule_case{48, 32, false, 96},
        rule_case{128, 32, true, -1}, rule_case{128, 64, false, -1}, rule_case{300, 32, true, 100}})
    for (std::int64_t piece : {1, 7, 256}) {
      CAPTURE(rc.residual);
      CAPTURE(rc.group);
      CAPTURE(rc.k_quant);
      CAPTURE(rc.compress_after);
      CAPTURE(piece);
      kvcal::kv_rule r;
      r.residual = rc.residual;
      r.group = rc.group;
      r.k_quant = rc.k_quant;
      r.v_quant = true;
      r.compress_after = rc.compress_after;
      std::int64_t n = 0, kc = 0, vc = 0, nk = 0, nv = 0;
      int max_dv = 0, max_dk = 0;
      while (n < 1200) {
        const std::int64_t t = n < 300 ? piece : 1;  // a prompt in pieces, then decode steps
        int rows[kvcal::kv_ctr_rows];
        kvcal::kv_step_rows(rows, n, kc, vc, t, r);
        n += t;
        // compressed_cache::compress, naively
        const bool dormant = rc.compress_after >= 0 && n <= rc.compress_after;
        const std::int64_t eligible = dormant ? 0 : std::max<std::int64_t>(0, n - rc.residual);
        if (rc.k_quant)
          while (nk + rc.group <= eligible) nk += rc.group;
        while (nv < eligible) ++nv;
        REQUIRE(rows[kvcal::kv_n_old] == n - t);
        REQUIRE(rows[kvcal::kv_n_new] == n);
        REQUIRE(rows[kvcal::kv_kc_new] == nk);
        REQUIRE(rows[kvcal::kv_vc_new] == nv);
        REQUIRE(rows[kvcal::kv_k_from] == kc);
        REQUIRE(rows[kvcal::kv_v_from] == vc);
        REQUIRE(kvcal::kv_k_compressed(n, r) == nk);
        REQUIRE(kvcal::kv_v_compressed(n, r) == nv);
        if (t == 1) {
          const int dk = (rows[kvcal::kv_k_to] - rows[kvcal::kv_k_from]) / rc.group;
          const int dv = rows[kvcal::kv_v_to] - rows[kvcal::kv_v_from];
          REQUIRE(dk <= kvcal::kv_step_max_k_blocks(r));
          REQUIRE(dv <= kvcal::kv_step_max_v_tokens(r));
          max_dk = std::max(max_dk, dk);
          max_dv = std::max(max_dv, dv);
        }
        // the ring (max(residual + group, compress_after) + piece rows) holds every token not
        // yet in records of both streams, before this append's compress too
        const std::int64_t ring =
            std::max<std::int64_t>(rc.residual + rc.group, rc.compress_after) + piece;
        REQUIRE(n - std::min(rc.k_quant ? kc : vc, vc) <= ring);
        kc = rows[kvcal::kv_kc_new];
        vc = rows[kvcal::kv_vc_new];
      }
      // The decode-step bounds are tight when the crossing happens in a decode step.
      if (rc.compress_after >= 300 && rc.compress_after + 1 > rc.residual) {
        CHECK(max_dv == kvcal::kv_step_max_v_tokens(r));
        CHECK(max_dv == rc.compress_after + 1 - rc.residual);
        if (rc.k_quant) CHECK(max_dk == kvcal::kv_step_max_k_blocks(r));
      }
      if (rc.compress_after < 0) CHECK(kvcal::kv_step_max_v_tokens(r) == 1);
      if (!rc.k_quant) CHECK(kc == 0);
    }
}

TEST_CASE("eviction step counters keep R(seen) rows (the host mirror's rule)") {
  // Budgets of evict.h's rule, computed naively here: h2o retain / tokens, window sinks + recent.
  struct budget {
    double retain;
    std::int64_t tokens;
  };
  for (const budget bud :
       {budget{0.125, 0}, budget{0.3, 0}, budget{1.0, 0}, budget{0.0, 37}, budget{0.0, 64}}) {
    CAPTURE(bud.retain);
    CAPTURE(bud.tokens);
    auto R = [&](std::int64_t seen) {
      std::int64_t r = bud.retain > 0 ? static_cast<std::int64_t>(bud.retain * seen) : bud.tokens;
      return std::min(seen, std::max<std::int64_t>(1, r));
    };
    for (std::int64_t prompt : {0, 1, 100}) {
      CAPTURE(prompt);
      // After a prompt: row, held, seen = T, out = R(T) (select_kept); empty: all zero.
      std::int64_t out = prompt > 0 ? R(prompt) : 0, seen = prompt;
      for (int step = 0; step < 500; ++step) {
        int rows[kvcal::ev_rows];
        kvcal::ev_step_rows(rows, out, seen);
        REQUIRE(rows[kvcal::ev_row] == out);  // the new token goes to the first free row
        REQUIRE(rows[kvcal::ev_held] == out + 1);
        REQUIRE(rows[kvcal::ev_seen] == seen + 1);
        seen = rows[kvcal::ev_seen];
        // evict_one: rows after eviction = min(held, R(seen))
        out = std::min<std::int64_t>(rows[kvcal::ev_held], R(seen));
        REQUIRE(out == R(seen));  // what set_host_length mirrors without a read-back
      }
    }
  }
}
