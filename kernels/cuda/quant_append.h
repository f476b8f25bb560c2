// CUDA append for the KIVI-style cache of kernels/cuda/packed_kv.h, in two steps:
//   launch_kv_window_append  new tokens (fp32, keys before RoPE) -> fp16 window ring rows
//   launch_quant_compress    tokens leaving the window -> quantized, bit-packed records
// The records are byte-identical to the CPU reference's (kernels/cpu/quantize.h): same fp16
// zero (min rounded down), scale (range / levels rounded up, widened until it covers the max),
// codes rint((x - zero) * (1 / scale)) with every float operation rounded as on the host (no FMA
// contraction), so the CPU runtime decodes GPU-written records and the tests compare bytes.
// Both launchers allocate nothing and read no device memory on the host (CUDA-graph safe).
//
//   kvcal::quant_compress_params p{view, k_from, k_to, v_from, v_to, 1, 128};
//   cudaError_t e = kvcal::launch_quant_compress(p, stream);   // e.g. check_launch(e, "compress")
#pragma once

#include "kernels/cuda/packed_kv.h"

namespace kvcal {

struct kv_window_append_params {
  packed_kv_view kv;
  const float* k_new = nullptr;  // [B, t_new, n_kv, d] keys before RoPE
  const float* v_new = nullptr;  // [B, t_new, n_kv, d]
  int t_new = 0;                 // tokens appended to every sequence
  // Token i of sequence b goes to position kv.n_tokens[b] + i (n_tokens read BEFORE the caller
  // advances it): ring row (n_tokens[b] + i) % win_cap.
};
cudaError_t launch_kv_window_append(const kv_window_append_params& p, cudaStream_t stream);

struct quant_compress_params {
  packed_kv_view kv;
  // Per sequence (device, [B]): K tokens [k_from, k_to) become records k_from / k_group ..
  // (both multiples of k_group); V tokens [v_from, v_to) become records v_from ... All of them
  // must still be in the window ring. Null pointers skip that stream.
  const int* k_from = nullptr;
  const int* k_to = nullptr;
  const int* v_from = nullptr;
  const int* v_to = nullptr;
  int max_k_blocks = 0;  // grid bound: max over b of (k_to - k_from) / k_group
  int max_v_tokens = 0;  // grid bound: max over b of v_to - v_from
};
// bits 2/3/4/8, head_dim 64/128, per-token group dividing head_dim, per-channel group <= 128.
cudaError_t launch_quant_compress(const quant_compress_params& p, cudaStream_t stream);

}  // namespace kvcal
