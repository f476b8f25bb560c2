#include <string>

#include "kernels/cuda/kv_step.h"

namespace kvcal {

namespace {

// One CTA; thread b advances sequence b (reads its row values before writing any).
__global__ void kv_step_kernel(kv_step_params p) {
  const int B = p.batch;
  for (int b = threadIdx.x; b < B; b += blockDim.x) {
    if (p.ctr) {
      kv_rule rule = kv_rule_of(p.residual, p.group, p.quant);
      rule.k_quant = p.quant && !p.k_fp16;
      rule.compress_after = p.compress_after;
      int rows[kv_ctr_rows];
      kv_step_rows(rows, p.ctr[kv_n_new * B + b], p.ctr[kv_kc_new * B + b],
                   p.ctr[kv_vc_new * B + b], p.t_new, rule);
      for (int r = 0; r < kv_ctr_rows; ++r) p.ctr[r * B + b] = rows[r];
    }
    if (p.ectr) {
      int rows[ev_rows];
      ev_step_rows(rows, p.ectr[ev_out * B + b], p.ectr[ev_seen * B + b]);
      for (int r = 0; r < ev_rows; ++r) p.ectr[r * B + b] = rows[r];
      for (int g = 0; g < p.n_kv; ++g) {
        const std::int64_t i = (static_cast<std::int64_t>(b) * p.n_kv + g) * p.rows + rows[ev_row];
        p.pos[i] = rows[ev_seen] - 1;
        p.score[i] = 0.0f;
      }
    }
  }
}

cudaError_t invalid(std::string msg) {
  set_launch_error(std::move(msg));
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_kv_step(const kv_step_params& p, cudaStream_t stream) {
  if (p.batch <= 0 || p.t_new < 0)
    return invalid("kv_step: batch " + std::to_string(p.batch) + ", t_new " +
                   std::to_string(p.t_new) + ": need batch >= 1 and t_new >= 0");
  if (p.ctr && p.quant && p.group <= 0)
    return invalid("kv_step: group " + std::to_string(p.group) + " must be positive");
  if (p.ectr && (p.t_new != 1 || p.n_kv <= 0 || p.rows <= 0 || !p.pos || !p.score))
    return invalid("kv_step: eviction steps take one token (t_new " + std::to_string(p.t_new) +
                   ") and need n_kv, rows, pos and score");
  set_launch_error("");
  if (!p.ctr && !p.ectr) return cudaSuccess;
  const int threads = p.batch < 256 ? ((p.batch + 31) / 32) * 32 : 256;
  kv_step_kernel<<<1, threads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace kvcal
