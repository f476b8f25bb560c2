// kernels/cuda/kv_step.h on the GPU (label gpu): the step kernel captured once in a CUDA graph
// (raw CUDA graph API, no libtorch) and replayed advances the packed / eviction counters exactly
// as the host rule iterated step by step (kernels/cuda/kv_counters.h), writes the new row's
// position and zero score (also under the adaptive and V-only rules), and refuses bad parameters.
// Frozen counters (the pre-issue host copy captured in a graph) would fail the comparison at the
// second replay.
#include <cuda_runtime.h>
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/common/cuda_device.h"
#include "kernels/cuda/kv_step.h"
#include "tests/gpu_test_util.h"

using namespace kvcal;
using kvcal::test::dbuf;

namespace {

// One launch captured on `stream` into an executable graph.
cudaGraphExec_t capture(const kv_step_params& p, cudaStream_t stream) {
  cudaGraph_t g = nullptr;
  cudaGraphExec_t exec = nullptr;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  const cudaError_t launched = launch_kv_step(p, stream);
  CUDA_OK(cudaStreamEndCapture(stream, &g));
  CUDA_OK(launched);
  CUDA_OK(cudaGraphInstantiate(&exec, g, 0));
  cudaGraphDestroy(g);
  return exec;
}

}  // namespace

TEST_CASE("kv_step replayed from a CUDA graph advances the counters as the host rule") {
  SKIP_WITHOUT_GPU();
  cudaStream_t stream = nullptr;
  CUDA_OK(cudaStreamCreate(&stream));
  const int B = 3;
  SUBCASE("packed: KIVI 4-bit rule and fp16") {
    for (bool quant : {true, false})
      for (int residual : {0, 128}) {
        CAPTURE(quant);
        CAPTURE(residual);
        const int group = 32;
        // After a prompt of 100 tokens (the host's prompt counters).
        int rows[kv_ctr_rows];
        kv_step_rows(rows, 0, 0, 0, 100, residual, group, quant);
        std::vector<int> host(static_cast<std::size_t>(kv_ctr_rows * B));
        for (int r = 0; r < kv_ctr_rows; ++r)
          for (int b = 0; b < B; ++b) host[static_cast<std::size_t>(r * B + b)] = rows[r];
        dbuf<int> ctr(host);
        kv_step_params p;
        p.batch = B;
        p.ctr = ctr.p;
        p.residual = residual;
        p.group = group;
        p.quant = quant;
        cudaGraphExec_t exec = capture(p, stream);
        std::int64_t n = rows[kv_n_new], kc = rows[kv_kc_new], vc = rows[kv_vc_new];
        for (int step = 0; step < 200; ++step) {
          CUDA_OK(cudaGraphLaunch(exec, stream));
          CUDA_OK(cudaStreamSynchronize(stream));
          kv_step_rows(rows, n, kc, vc, 1, residual, group, quant);
          const std::vector<int> got = ctr.download();
          for (int r = 0; r < kv_ctr_rows; ++r)
            for (int b = 0; b < B; ++b)
              REQUIRE(got[static_cast<std::size_t>(r * B + b)] == rows[r]);
          n = rows[kv_n_new];
          kc = rows[kv_kc_new];
          vc = rows[kv_vc_new];
        }
        CHECK(n == 300);
        if (quant) CHECK(kc == (300 - residual) / group * group);
        cudaGraphExecDestroy(exec);
      }
  }
  SUBCASE("packed: adaptive compress_after and V-only (latent V, fp16 K) rules") {
    // knlp-like (K fp16, window 48, dormant up to 96) and hybrid-adaptive (K records): a prompt of
    // 40, then 200 replayed steps, the crossing (49 V tokens at once) among them.
    for (bool k_fp16 : {true, false}) {
      CAPTURE(k_fp16);
      kv_rule rule;
      rule.residual = 48;
      rule.group = 32;
      rule.k_quant = !k_fp16;
      rule.v_quant = true;
      rule.compress_after = 96;
      int rows[kv_ctr_rows];
      kv_step_rows(rows, 0, 0, 0, 40, rule);
      std::vector<int> host(static_cast<std::size_t>(kv_ctr_rows * B));
      for (int r = 0; r < kv_ctr_rows; ++r)
        for (int b = 0; b < B; ++b) host[static_cast<std::size_t>(r * B + b)] = rows[r];
      dbuf<int> ctr(host);
      kv_step_params p;
      p.batch = B;
      p.ctr = ctr.p;
      p.residual = rule.residual;
      p.group = rule.group;
      p.quant = true;
      p.k_fp16 = k_fp16;
      p.compress_after = 96;
      cudaGraphExec_t exec = capture(p, stream);
      std::int64_t n = rows[kv_n_new], kc = rows[kv_kc_new], vc = rows[kv_vc_new];
      int widest = 0;
      for (int step = 0; step < 200; ++step) {
        CUDA_OK(cudaGraphLaunch(exec, stream));
        CUDA_OK(cudaStreamSynchronize(stream));
        kv_step_rows(rows, n, kc, vc, 1, rule);
        const std::vector<int> got = ctr.download();
        for (int r = 0; r < kv_ctr_rows; ++r)
          for (int b = 0; b < B; ++b) REQUIRE(got[static_cast<std::size_t>(r * B + b)] == rows[r]);
        widest = std::max(widest, rows[kv_v_to] - rows[kv_v_from]);
        n = rows[kv_n_new];
        kc = rows[kv_kc_new];
        vc = rows[kv_vc_new];
      }
      CHECK(widest == 49);  // the crossing: 97 - 48 tokens in one step
      CHECK(widest == kv_step_max_v_tokens(rule));
      CHECK(vc == 240 - 48);
      CHECK(kc == (k_fp16 ? 0 : (240 - 48) / 32 * 32));
      cudaGraphExecDestroy(exec);
    }
  }
  SUBCASE("eviction: free row, held, seen, and the new row's position / score") {
    const int n_kv = 2, T = 40, steps = 50, rows_per_slot = T + steps + 1;
    std::vector<int> host(static_cast<std::size_t>(ev_rows * B));
    const int prompt[ev_rows] = {T, T, T, T / 4};  // row, held, seen, out after a prompt
    for (int r = 0; r < ev_rows; ++r)
      for (int b = 0; b < B; ++b) host[static_cast<std::size_t>(r * B + b)] = prompt[r];
    dbuf<int> ectr(host);
    dbuf<int> pos(std::vector<int>(static_cast<std::size_t>(B * n_kv * rows_per_slot), -7));
    dbuf<float> score(std::vector<float>(static_cast<std::size_t>(B * n_kv * rows_per_slot), 5.f));
    kv_step_params p;
    p.batch = B;
    p.ectr = ectr.p;
    p.n_kv = n_kv;
    p.rows = rows_per_slot;
    p.pos = pos.p;
    p.score = score.p;
    cudaGraphExec_t exec = capture(p, stream);
    std::int64_t out = prompt[ev_out], seen = prompt[ev_seen];
    for (int step = 0; step < steps; ++step) {
      CUDA_OK(cudaGraphLaunch(exec, stream));
      CUDA_OK(cudaStreamSynchronize(stream));
      int rows[ev_rows];
      ev_step_rows(rows, out, seen);
      const std::vector<int> got = ectr.download();
      for (int r = 0; r < ev_rows; ++r)
        for (int b = 0; b < B; ++b) REQUIRE(got[static_cast<std::size_t>(r * B + b)] == rows[r]);
      const std::vector<int> ps = pos.download();
      const std::vector<float> sc = score.download();
      for (int slot = 0; slot < B * n_kv; ++slot) {
        const std::size_t i = static_cast<std::size_t>(slot * rows_per_slot + rows[ev_row]);
        REQUIRE(ps[i] == seen);  // the new token's position: tokens seen before it
        REQUIRE(sc[i] == 0.0f);
      }
      out = rows[ev_out];  // no evict_one here: the rows only grow
      seen = rows[ev_seen];
    }
    // Rows never written by a step keep their values.
    const std::vector<int> ps = pos.download();
    CHECK(ps[static_cast<std::size_t>(T / 4 - 1)] == -7);
    cudaGraphExecDestroy(exec);
  }
  SUBCASE("bad parameters are refused") {
    dbuf<int> e(std::vector<int>(static_cast<std::size_t>(ev_rows * B), 0));
    kv_step_params p;
    p.batch = B;
    p.ectr = e.p;
    p.t_new = 2;  // eviction steps take one token
    CHECK(launch_kv_step(p, stream) == cudaErrorInvalidValue);
    CHECK(!last_launch_error().empty());
    p.t_new = 1;  // still no pos / score
    CHECK(launch_kv_step(p, stream) == cudaErrorInvalidValue);
    kv_step_params q;
    CHECK(launch_kv_step(q, stream) == cudaErrorInvalidValue);  // batch 0
  }
  cudaStreamDestroy(stream);
}
