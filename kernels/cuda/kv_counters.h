// Per-layer step counters of the GPU packed cache (model/gpu_packed_cache.h), as pure host /
// device arithmetic: the host uses it for prompts (and its bookkeeping mirror), the device step
// kernel (kernels/cuda/kv_step.h) for decode steps, so both advance the same way. No CUDA
// headers: the CPU tests include it.
//
// Packed counters of one layer, int32 [kv_ctr_rows][B] (row r of sequence b at r * B + b):
//   n_old            tokens held before this append (the window append writes from there)
//   [k_from, k_to)   K tokens that become per-channel records this append (multiples of group)
//   [v_from, v_to)   V tokens that become per-token (quantized or latent) records this append
//   n_new, kc_new, vc_new   held / K-compressed / V-compressed tokens after it
// KIVI rule: the newest `residual` tokens stay fp16; older ones are compressed, K in whole
// groups: kc(n) = floor(max(0, n - residual) / group) x group, vc(n) = max(0, n - residual)
// (both 0 for an fp16 cache; kc 0 when only V is compressed: the V latent mode with fp16 K).
// One token more moves kc by 0 or `group` and vc by 0 or 1, so a decode step compresses at most
// one K block and one V token per sequence (fixed grid bounds).
// Adaptive mode (compress_after >= 0, runtime/compressed_cache.cpp): nothing is compressed while
// n <= compress_after (dormant), the rule above afterwards, so the step that crosses it
// compresses up to compress_after + 1 - residual tokens at once: kv_step_max_v_tokens /
// kv_step_max_k_blocks give the fixed grid bounds of a decode step under a rule.
//
// Eviction counters of one layer, int32 [ev_rows][B]: the row the new token goes to, rows
// attended, tokens seen, rows after eviction (written by evict_one). A step: row = out,
// held = out + 1, seen + 1, out = out + 1 (evict_one lowers it to min(held, R(seen))).
//
//   int rows[kvcal::kv_ctr_rows];
//   kvcal::kv_step_rows(rows, n, kc, vc, /*t=*/1, residual, group, quant);
//   kvcal::kv_rule r;  r.residual = 256;  r.v_quant = true;  r.compress_after = 512;  // knlp
//   kvcal::kv_step_rows(rows, n, kc, vc, 1, r);
#pragma once

#include <cstdint>

#ifndef KVCAL_HOST_DEVICE
#ifdef __CUDACC__
#define KVCAL_HOST_DEVICE __host__ __device__
#else
#define KVCAL_HOST_DEVICE
#endif
#endif

namespace kvcal {

enum kv_ctr_row {
  kv_n_old,
  kv_k_from,
  kv_k_to,
  kv_v_from,
  kv_v_to,
  kv_n_new,
  kv_kc_new,
  kv_vc_new,
  kv_ctr_rows
};
enum ev_ctr_row { ev_row, ev_held, ev_seen, ev_out, ev_rows };

// The compress rule of one layer (see above).
struct kv_rule {
  int residual = 0, group = 32;
  bool k_quant = false, v_quant = false;  // K records / V records (quantized or latent)
  std::int64_t compress_after = -1;       // adaptive: dormant while n <= compress_after
};

KVCAL_HOST_DEVICE inline std::int64_t kv_rest(std::int64_t n, const kv_rule& r) {
  if (r.compress_after >= 0 && n <= r.compress_after) return 0;
  return n > r.residual ? n - r.residual : 0;
}
// Tokens compressed once n are held: K (a multiple of group) and V.
KVCAL_HOST_DEVICE inline std::int64_t kv_k_compressed(std::int64_t n, const kv_rule& r) {
  return r.k_quant ? kv_rest(n, r) / r.group * r.group : 0;
}
KVCAL_HOST_DEVICE inline std::int64_t kv_v_compressed(std::int64_t n, const kv_rule& r) {
  return r.v_quant ? kv_rest(n, r) : 0;
}
// The KIVI rule with K and V alike (no adaptive mode).
KVCAL_HOST_DEVICE inline kv_rule kv_rule_of(int residual, int group, bool quant) {
  kv_rule r;
  r.residual = residual;
  r.group = group;
  r.k_quant = r.v_quant = quant;
  return r;
}
KVCAL_HOST_DEVICE inline std::int64_t kv_k_compressed(std::int64_t n, int residual, int group,
                                                      bool quant) {
  return kv_k_compressed(n, kv_rule_of(residual, group, quant));
}
KVCAL_HOST_DEVICE inline std::int64_t kv_v_compressed(std::int64_t n, int residual, bool quant) {
  return kv_v_compressed(n, kv_rule_of(residual, 1, quant));
}

// Most V tokens / K blocks one decode step (one token) compresses under r: 1, or the crossing of
// compress_after (at least 1: a decode step's launch bounds).
KVCAL_HOST_DEVICE inline int kv_step_max_v_tokens(const kv_rule& r) {
  if (r.compress_after < 0) return 1;
  const std::int64_t jump = r.compress_after + 1 - r.residual;
  return jump > 1 ? static_cast<int>(jump) : 1;
}
KVCAL_HOST_DEVICE inline int kv_step_max_k_blocks(const kv_rule& r) {
  if (r.compress_after < 0) return 1;
  const std::int64_t jump = r.compress_after + 1 - r.residual;
  const std::int64_t blocks = jump > 0 ? jump / r.group : 0;
  return blocks > 1 ? static_cast<int>(blocks) : 1;
}

// The packed counters of an append of t tokens to a layer holding n tokens of which kc / vc are
// compressed (rows: kv_ctr_row).
KVCAL_HOST_DEVICE inline void kv_step_rows(int* rows, std::int64_t n, std::int64_t kc,
                                           std::int64_t vc, std::int64_t t, const kv_rule& r) {
  const std::int64_t n2 = n + t;
  const std::int64_t k2 = kv_k_compressed(n2, r);
  const std::int64_t v2 = kv_v_compressed(n2, r);
  rows[kv_n_old] = static_cast<int>(n);
  rows[kv_k_from] = static_cast<int>(kc);
  rows[kv_k_to] = static_cast<int>(k2);
  rows[kv_v_from] = static_cast<int>(vc);
  rows[kv_v_to] = static_cast<int>(v2);
  rows[kv_n_new] = static_cast<int>(n2);
  rows[kv_kc_new] = static_cast<int>(k2);
  rows[kv_vc_new] = static_cast<int>(v2);
}
KVCAL_HOST_DEVICE inline void kv_step_rows(int* rows, std::int64_t n, std::int64_t kc,
                                           std::int64_t vc, std::int64_t t, int residual, int group,
                                           bool quant) {
  kv_step_rows(rows, n, kc, vc, t, kv_rule_of(residual, group, quant));
}

// The eviction counters of a one-token step after `out` rows were kept of `seen` tokens.
KVCAL_HOST_DEVICE inline void ev_step_rows(int* rows, std::int64_t out, std::int64_t seen) {
  rows[ev_row] = static_cast<int>(out);
  rows[ev_held] = static_cast<int>(out + 1);
  rows[ev_seen] = static_cast<int>(seen + 1);
  rows[ev_out] = static_cast<int>(out + 1);
}

}  // namespace kvcal
