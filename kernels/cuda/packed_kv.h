// Device layout of a KIVI-style compressed KV cache for one layer, shared by the CUDA append
// (kernels/cuda/quant_append.h) and decode attention (kernels/cuda/decode_attention.h) kernels.
//
// A slot is one (sequence b, KV head g), slot = b * n_kv + g. Per slot, token t (position t, the
// `full` policy: consecutive positions from 0, no sinks yet) lives in
//   K: per-channel record t / k_group  if t < k_compressed[b]  (a multiple of k_group)
//      fp16 window ring row t % win_cap otherwise
//   V: per-token record t               if t < v_compressed[b]
//      fp16 window ring row t % win_cap otherwise
// Records are byte-identical to the CPU reference's (runtime/kv_codec.h, kernels/cpu/quantize.h):
//   per-channel K record: fp16 scales [d], fp16 zeros [d], codes packed_bytes(group * d, bits),
//                         token-major (code of (token j, channel c) is stream index j * d + c)
//   per-token   V record: fp16 scales [d / group], fp16 zeros [d / group],
//                         codes packed_bytes(d, bits)
// so a record copied to the host decodes with kvcal::dequantize_per_channel / _per_token.
// Keys are stored BEFORE RoPE (DESIGN.md §3.1); decode attention rotates them at their position.
// Only asymmetric quantization runs on the GPU (every shipped KIVI template is asymmetric).
// The ring must hold every token not yet in records of both streams: n_tokens[b] -
// min(k_compressed[b], v_compressed[b]) <= win_cap (e.g. residual + k_group + tokens per step).
// bits == 16 means the stream is not quantized: every token stays in the fp16 ring (win_cap must
// then cover the whole context); this is the fp16 baseline.
//
//   k_rec: [B, n_kv, k_slot_records, k_record_bytes]   (k_slot_records >= max tokens / k_group)
//   v_rec: [B, n_kv, v_slot_records, v_record_bytes]   (v_slot_records >= max tokens)
//   k_win, v_win: [B, n_kv, win_cap, d] fp16 (pre-RoPE keys, values)
//   n_tokens, k_compressed, v_compressed: [B] int32, device memory (graph-safe: no host reads)
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#ifdef __CUDACC__
#define KVCAL_HOST_DEVICE __host__ __device__
#else
#define KVCAL_HOST_DEVICE
#endif

namespace kvcal {

struct packed_kv_view {
  int batch = 0, n_kv = 0, head_dim = 0;
  int k_bits = 2, k_group = 32;  // per-channel: group = tokens per record
  int v_bits = 2, v_group = 32;  // per-token: group = channels per scale
  std::uint8_t* k_rec = nullptr;
  std::uint8_t* v_rec = nullptr;
  std::int64_t k_slot_records = 0, v_slot_records = 0;
  __half* k_win = nullptr;
  __half* v_win = nullptr;
  int win_cap = 0;
  const int* n_tokens = nullptr;
  const int* k_compressed = nullptr;
  const int* v_compressed = nullptr;
  // bits 16 only: the ring holds keys AFTER RoPE (the eviction cache, whose rows are unordered,
  // kernels/cuda/evict.h), so decode attention rotates neither keys nor queries and needs no
  // RoPE tables; row t of the ring is read for t < n_tokens[b] (n_tokens = rows held).
  bool keys_rotated = false;
};

// Bytes of one record (same numbers as runtime/kv_codec.cpp, asymmetric).
KVCAL_HOST_DEVICE inline std::size_t k_record_bytes(int d, int bits, int group) {
  return static_cast<std::size_t>(d) * 4 +
         (static_cast<std::size_t>(group) * static_cast<std::size_t>(d) * bits + 7) / 8;
}
KVCAL_HOST_DEVICE inline std::size_t v_record_bytes(int d, int bits, int group) {
  return static_cast<std::size_t>(d / group) * 4 + (static_cast<std::size_t>(d) * bits + 7) / 8;
}

// The message behind the last cudaErrorInvalidValue returned by a kvcal launch_* function of
// this thread (empty when the last launch was accepted). Launchers never throw: a caller that
// wants the kvcal error path calls check_launch(err) below.
const std::string& last_launch_error();
void set_launch_error(std::string msg);
// Throws kvcal::error naming `what`, the CUDA error and last_launch_error() unless err is success.
void check_launch(cudaError_t err, const char* what);

}  // namespace kvcal
