#include <string>

#include "kernels/cuda/h2o_score.h"

namespace kvcal {

namespace {

// grid (ceil(max_tokens / 256), B * n_kv), block 256: one thread per (slot, row).
__global__ void h2o_accumulate_kernel(h2o_accumulate_params p) {
  const int slot = blockIdx.y, b = slot / p.n_kv, g = slot % p.n_kv;
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= p.held[b]) return;
  const int G = p.n_heads / p.n_kv;
  const float inv_g = 1.0f / static_cast<float>(G);
  float a = 0.0f;
  for (int r = 0; r < G; ++r) {
    const std::int64_t bh = static_cast<std::int64_t>(b) * p.n_heads + g * G + r;
    const float mx = p.row_stats[2 * bh], sum = p.row_stats[2 * bh + 1];
    const float pj = sum > 0.0f ? exp2f(p.logits[bh * p.max_tokens + t] - mx) / sum : 0.0f;
    a += pj * inv_g;
  }
  p.score[static_cast<std::int64_t>(slot) * p.score_stride + t] += a;
}

}  // namespace

cudaError_t launch_h2o_accumulate(const h2o_accumulate_params& p, cudaStream_t stream) {
  if (p.batch <= 0 || p.n_kv <= 0 || p.n_heads <= 0 || p.n_heads % p.n_kv != 0 ||
      p.max_tokens <= 0 || p.score_stride < p.max_tokens) {
    set_launch_error("h2o_accumulate: batch " + std::to_string(p.batch) + ", " +
                     std::to_string(p.n_heads) + " query / " + std::to_string(p.n_kv) +
                     " KV heads, max_tokens " + std::to_string(p.max_tokens) + ", score stride " +
                     std::to_string(p.score_stride) +
                     ": need positive counts, heads a multiple of KV heads, stride >= max_tokens");
    return cudaErrorInvalidValue;
  }
  if (!p.logits || !p.row_stats || !p.held || !p.score) {
    set_launch_error("h2o_accumulate: logits, row_stats, held and score are required");
    return cudaErrorInvalidValue;
  }
  set_launch_error("");
  const dim3 grid((p.max_tokens + 255) / 256, p.batch * p.n_kv);
  h2o_accumulate_kernel<<<grid, 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace kvcal
