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
//
// V latent mode (v_latent_rank r > 0; PCA or linear autoencoder values, DESIGN.md §3.2): a
// compressed V token is the CPU linear codec's record (runtime/kv_codec.h), byte-identical:
//   v_latent_bits 16: fp16 z [r]                                 2 r bytes
//   v_latent_bits 8/4: fp16 scale, fp16 zero, codes packed_bytes(r, bits), one asymmetric group
// with z = enc_w x + enc_b and x' = dec_w z + dec_b, one map per KV head, fp32:
//   v_enc_w: [n_kv, r, d]  v_enc_b: [n_kv, r]  v_dec_w: [n_kv, d, r]  v_dec_b: [n_kv, d]
// (v_bits / v_group are then unused; r a multiple of 16, <= head_dim; decode attention takes
// 16 / 32 / 64 / 96 / 128). K is unchanged: fp16
// (k_bits 16, every token in the ring) or per-channel records. Attention runs on latents:
// P V = (P Z) dec_w^T + (sum P) dec_b (kernels/cuda/decode_attention.h).
//   v_rec: [B, n_kv, v_slot_records, latent_record_bytes(r, v_latent_bits)]
//
// K latent mode (k_latent_rank rk > 0; PCA or linear-autoencoder keys): a compressed K token is
// a per-token linear-codec record as above (rank rk, k_latent_bits), of the key BEFORE RoPE:
//   k_rec: [B, n_kv, k_slot_records, latent_record_bytes(rk, k_latent_bits)], record t for
//          t < k_compressed[b] (any count: no K group), k_slot_records >= max tokens
//   k_enc_w: [n_kv, rk, d]  k_enc_b: [n_kv, rk]  k_dec_w: [n_kv, d, rk]  k_dec_b: [n_kv, d]
// Decode attention reconstructs k = dec_w z + dec_b and rotates it at its position (a rotated
// key does not factor through a fixed basis); k_bits / k_group are then unused. Records are made
// by launch_latent_compress (k_from / k_to, kernels/cuda/latent_append.h), byte-identical to the
// CPU codec's. Decode attention runs it only in the register-direct kernel (head_dim 128) and
// only with the V latent mode of the same rank and the same compressed range: k_compressed[b]
// == v_compressed[b] (the kernel reads latent keys for [0, v_compressed), the ring after; a
// device value, not checked on the host). The window append serves both modes; the KIVI compress
// (quant_compress), evict_one and the other decode kernels refuse k_latent_rank != 0.
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
  // V latent mode (see the header comment); 0 = off.
  int v_latent_rank = 0;
  int v_latent_bits = 16;          // 16 | 8 | 4
  const float* v_enc_w = nullptr;  // [n_kv, r, d] (append)
  const float* v_enc_b = nullptr;  // [n_kv, r]    (append)
  const float* v_dec_w = nullptr;  // [n_kv, d, r] (attention)
  const float* v_dec_b = nullptr;  // [n_kv, d]    (attention)
  // K latent mode (see the header comment); 0 = off.
  int k_latent_rank = 0;
  int k_latent_bits = 16;          // 16 | 8 | 4
  const float* k_enc_w = nullptr;  // [n_kv, rk, d] (append)
  const float* k_enc_b = nullptr;  // [n_kv, rk]    (append)
  const float* k_dec_w = nullptr;  // [n_kv, d, rk] (attention)
  const float* k_dec_b = nullptr;  // [n_kv, d]     (attention)
};

// Bytes of one record (same numbers as runtime/kv_codec.cpp, asymmetric).
KVCAL_HOST_DEVICE inline std::size_t k_record_bytes(int d, int bits, int group) {
  return static_cast<std::size_t>(d) * 4 +
         (static_cast<std::size_t>(group) * static_cast<std::size_t>(d) * bits + 7) / 8;
}
KVCAL_HOST_DEVICE inline std::size_t v_record_bytes(int d, int bits, int group) {
  return static_cast<std::size_t>(d / group) * 4 + (static_cast<std::size_t>(d) * bits + 7) / 8;
}

// Bytes of one V latent record (runtime/kv_codec.cpp latent_record_bytes).
KVCAL_HOST_DEVICE inline std::size_t latent_record_bytes_of(int rank, int bits) {
  return bits == 16 ? static_cast<std::size_t>(rank) * 2
                    : 4 + (static_cast<std::size_t>(rank) * static_cast<std::size_t>(bits) + 7) / 8;
}

// The message behind the last cudaErrorInvalidValue returned by a kvcal launch_* function of
// this thread (empty when the last launch was accepted). Launchers never throw: a caller that
// wants the kvcal error path calls check_launch(err) below.
const std::string& last_launch_error();
void set_launch_error(std::string msg);
// Throws kvcal::error naming `what`, the CUDA error and last_launch_error() unless err is success.
void check_launch(cudaError_t err, const char* what);

}  // namespace kvcal
