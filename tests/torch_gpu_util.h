// Helpers shared by the libtorch GPU tests (test_llama_gpu, test_h2o_prompt_gpu,
// test_gpu_latent_cache, test_gpu_k_latent_cache): skip without CUDA, the largest absolute
// difference of two tensors, `kvcal -q ARGS` in process, and a greedy decode eager or replayed
// from a CUDA graph (the graph-vs-eager checks of every GPU cache mode).
#pragma once

#include <cstdint>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cli/app.h"
#include "model/decode_graph.h"
#include "model/kv_cache.h"
#include "model/llama.h"
#include "tests/torch_doctest.h"

namespace kvcal::test {

// False (with a message: the test case passes as skipped) without a CUDA libtorch and device.
inline bool have_gpu() {
  if (at::hasCUDA()) return true;
  MESSAGE("skipped: libtorch has no CUDA or no GPU is visible");
  return false;
}

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kCPU, at::kDouble) - b.to(at::kCPU, at::kDouble)).abs().max().item<double>();
}

// `kvcal -q ARGS`; the test stops unless it exits 0 (its stderr in the message).
inline void run_cli(const std::vector<std::string>& args) {
  std::vector<std::string> a = {"-q"};
  a.insert(a.end(), args.begin(), args.end());
  std::ostringstream out, err;
  const int rc = cli::run(a, out, err);
  INFO(err.str());
  REQUIRE(rc == 0);
}

// Greedy decode of n steps after prompt [B, T] through `cache` (empty), eagerly (model.forward
// every step) or captured once by decode_graph and replayed: logits [B, n + 1, V] on the CPU;
// tokens [B, n].
inline at::Tensor greedy_decode(const llama_model& m, kv_cache& cache, const at::Tensor& prompt,
                                std::int64_t B, std::int64_t n, bool graph, at::Tensor& tokens) {
  std::unique_ptr<decode_graph> dg;
  if (graph) dg = std::make_unique<decode_graph>(m, cache, B);
  at::Tensor lg = graph ? dg->prefill(prompt) : m.forward(prompt, cache, {logits_mode::last});
  std::vector<at::Tensor> logits{lg.cpu()}, toks;
  for (std::int64_t t = 0; t < n; ++t) {
    const at::Tensor next = lg.argmax(-1);  // [B, 1]
    toks.push_back(next.cpu());
    lg = graph ? dg->step(next) : m.forward(next, cache, {logits_mode::last});
    logits.push_back(lg.cpu());
  }
  if (graph) CHECK(dg->captured());
  tokens = at::cat(toks, 1);
  return at::cat(logits, 1);
}

}  // namespace kvcal::test
