// bench_h2o_prompt: the h2o preset's prompt cost per layer on the GPU (issue 11), at Qwen2.5-7B
// shapes by default: the flash attention that also returns the lse (model/attention_lse.h), the
// H2O prompt-score kernel (kernels/cuda/h2o_prompt.h), the plain prefill attention of the
// uncompressed cache (causal_attention) for scale, and (--old 1) the chunked fp32 libtorch loop
// the kernel replaced, timed once. Random bf16 q [B, T, H, d] seen as [B, H, T, d] (the model's
// layout), k / v [B, n_kv, T, d].
//
//   bench_h2o_prompt [--batch 8] [--tokens 32768] [--heads 28] [--kv 4] [--head-dim 128]
//                    [--reps 5] [--old 0]
#include <cuda_runtime.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <string>

#include "kernels/cuda/h2o_prompt.h"
#include "model/attention_lse.h"
#include "model/full_cache.h"
#include "model/h2o_prompt_params.h"

using namespace kvcal;

namespace {

// Mean wall time of fn in ms over `reps` runs after one warm-up, the device synchronized.
double time_ms(int reps, const std::function<void()>& fn) {
  fn();
  if (cudaDeviceSynchronize() != cudaSuccess) throw std::runtime_error("CUDA error in warm-up");
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) fn();
  if (cudaDeviceSynchronize() != cudaSuccess) throw std::runtime_error("CUDA error");
  const auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double, std::milli>(t1 - t0).count() / reps;
}

}  // namespace

int main(int argc, char** argv) try {
  long B = 8, T = 32768, H = 28, nkv = 4, d = 128, reps = 5, old = 0;
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (i + 1 >= argc) throw std::runtime_error("bench_h2o_prompt: " + a + " needs a value");
    const long v = std::atol(argv[i + 1]);
    if (a == "--batch")
      B = v;
    else if (a == "--tokens")
      T = v;
    else if (a == "--heads")
      H = v;
    else if (a == "--kv")
      nkv = v;
    else if (a == "--head-dim")
      d = v;
    else if (a == "--reps")
      reps = v;
    else if (a == "--old")
      old = v;
    else
      throw std::runtime_error("bench_h2o_prompt: unknown option " + a);
  }
  if (!at::hasCUDA()) throw std::runtime_error("bench_h2o_prompt: needs libtorch CUDA and a GPU");
  if (B < 1 || T < 1 || nkv < 1 || H % nkv != 0 || reps < 1)
    throw std::runtime_error("bench_h2o_prompt: bad shape");
  const auto o = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA, 0);
  at::Tensor q = at::randn({B, T, H, d}, o).transpose(1, 2);
  at::Tensor k = at::randn({B, nkv, T, d}, o), v = at::randn({B, nkv, T, d}, o);
  attention_lse a;
  const double t_flash =
      time_ms(static_cast<int>(reps), [&] { a = causal_attention_lse(q, k, v); });
  at::Tensor score = at::empty({B, nkv, T}, o.dtype(at::kFloat));
  const h2o_prompt_params p =
      h2o_prompt_params_of(q, k, a.lse, score, 1.0 / std::sqrt(static_cast<double>(d)));
  const double t_kernel = time_ms(static_cast<int>(reps), [&] {
    check_launch(launch_h2o_prompt_scores(p, nullptr), "bench_h2o_prompt: kernel");
  });
  const double t_plain =
      time_ms(static_cast<int>(reps), [&] { (void)causal_attention(q, k, v, 0, 0); });
  const double flop = 2.0 * static_cast<double>(B * H) * static_cast<double>(T) *
                      static_cast<double>(T + 1) / 2.0 * static_cast<double>(d);
  std::printf("B %ld  T %ld  heads %ld / %ld  d %ld  (ms per layer, mean of %ld)\n", B, T, H, nkv,
              d, reps);
  std::printf("  plain causal attention (uncompressed prefill)  %10.2f\n", t_plain);
  std::printf("  flash attention + lse                          %10.2f\n", t_flash);
  std::printf("  h2o_prompt scores kernel                       %10.2f  (%.0f TFLOP/s of QK^T)\n",
              t_kernel, flop / (t_kernel * 1e-3) / 1e12);
  if (old) {
    at::Tensor want;
    const double t_old = time_ms(1, [&] { want = h2o_scores_reference(q, k); });
    const double rel = (score - want).abs().sum().item<double>() / want.sum().item<double>();
    std::printf(
        "  chunked fp32 libtorch loop (replaced)          %10.2f  (L1 rel vs kernel %.2e)\n", t_old,
        rel);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
