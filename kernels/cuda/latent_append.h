// CUDA append of the V and K latent modes of kernels/cuda/packed_kv.h (PCA / linear-AE values and
// keys, keys before RoPE): tokens leaving the fp16 window ring become the CPU linear codec's latent
// records (runtime/kv_codec.h). K and V run the same kernel (one grid per stream given).
//   z = enc_w x + enc_b in fp32: z_i = enc_b_i, then z_i += enc_w[i, c] * x_c for c = 0 .. d-1 in
//       order, each product and sum rounded separately (no FMA), as linear_codec::encode does
//       on a host without FMA contraction (x86-64 g++ default), so z is bit-identical;
//   then fp16 z (bits 16) or one asymmetric group per token (bits 8 / 4) with the fp16 zero /
//   scale rules of kernels/cpu/quantize.h (store_latent). Records are therefore byte-identical
//   to the CPU's for all latent bits when the host does not contract a*b+c into an FMA.
// The window append itself is launch_kv_window_append (kernels/cuda/quant_append.h); KIVI K
// records, if any, are launch_quant_compress with null V pointers (it refuses a K latent view).
// Allocates nothing, reads no device memory on the host (CUDA-graph safe).
//
//   kvcal::latent_compress_params p{view, v_from, v_to, max_v_tokens, k_from, k_to, max_k_tokens};
//   kvcal::check_launch(kvcal::launch_latent_compress(p, stream), "latent compress");
#pragma once

#include "kernels/cuda/packed_kv.h"

namespace kvcal {

struct latent_compress_params {
  packed_kv_view kv;  // per stream encoded: its latent rank > 0 and enc_w / enc_b set
  // Per sequence (device, [B]): V tokens [v_from, v_to) become latent records v_from .. (all of
  // them still in the window ring). Null v_from: V is not encoded.
  const int* v_from = nullptr;
  const int* v_to = nullptr;
  int max_v_tokens = 0;  // grid bound: max over b of v_to - v_from
  // The same for K (kv.k_latent_rank > 0): K tokens [k_from, k_to) become latent K records (of
  // the pre-RoPE key, per token: no K group). Null k_from: K is not encoded.
  const int* k_from = nullptr;
  const int* k_to = nullptr;
  int max_k_tokens = 0;
};
// Per stream encoded: head_dim 64 / 128, rank a multiple of 16 in 16 .. head_dim, latent bits
// 16 / 8 / 4; neither stream given, or anything else: cudaErrorInvalidValue with the reason
// (naming the stream) in kvcal::last_launch_error().
cudaError_t launch_latent_compress(const latent_compress_params& p, cudaStream_t stream);

}  // namespace kvcal
