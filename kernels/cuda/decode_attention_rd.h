// Register-direct decode attention (decode_attention_params::register_direct): the partial
// kernel of the split-KV decode attention of kernels/cuda/decode_attention.h with transposed
// products, so that the GQA group fills the mma's n = 8 dimension and the packed K / V bytes go
// straight into mma fragments (no fp16 round trip of K / V through shared memory). Internal to
// kernels/cuda: decode_attention.cu calls it and then runs its own merge kernel over the same
// workspace layout (partials [B, n_heads, n_parts, 2] (max in log2 units, sum), then
// [B, n_heads, n_parts, d]). Design and fragment layouts: docs/runtime.md.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/decode_attention.h"

// CTAs per SM the kernel's registers are budgeted for (__launch_bounds__; 4: 128 registers) and
// query heads per CTA; the split plan of decode_attention.cu sizes one wave with them.
#ifndef KVCAL_RD_MIN_BLOCKS
#define KVCAL_RD_MIN_BLOCKS 4
#endif

namespace kvcal {

constexpr int kRdHeadsPerCta = 8;

// Shapes the register-direct kernel covers: head_dim 128 and
//   K bits 2 / 3 / 4 / 8 with V bits 2 / 3 / 4 / 8 no wider than K (mixed widths: K3V2, K4V2,
//     K8V4, ...), K group 32 / 64 / 128, V group 16 / 32 / 64 / 128 (a lane's 16 value channels
//     share one scale);
//   bits 16 (fp16 K and V, every token in the ring; keys before RoPE or keys_rotated);
//   the V latent mode: K fp16 or 2 / 4 / 8-bit records (K group 32 / 64 / 128; not 3-bit), rank
//     16 / 32 / 64 / 96 / 128, latent bits 16 / 8 / 4;
//   the K latent mode (keys before RoPE): with the V latent mode of the same rank (16 / 32 / 64 /
//     96 / 128), K and V latent bits 16 / 8 / 4 (the only kernel that reads latent keys).
// Depends on the shape only, so the split plan (and the workspace size) agree with the launch.
bool decode_attention_rd_supported(const decode_attention_params& p);

// The split plan of decode_attention.cu: split s covers the 32-token tiles [s * tiles_per_split,
// (s + 1) * tiles_per_split); in the V latent mode those of [0, v_compressed), and w_splits more
// CTAs (partials splits .. n_parts - 1) the window range [v_compressed, n) from its aligned tile.
struct decode_attention_rd_plan {
  int splits = 1, tiles_per_split = 1, n_parts = 1;
  int w_splits = 0, w_tiles_per_split = 1;
};

// Writes the partials of grid (splits, n_kv * ceil(G / 8), B) CTAs (and the window grid in the
// latent mode). p is validated by launch_decode_attention (softmax_scale and
// rope_attention_scaling resolved).
cudaError_t launch_decode_attention_rd_partials(const decode_attention_params& p,
                                                const decode_attention_rd_plan& plan,
                                                cudaStream_t stream);

// The partials for K of K_BITS bits (3, 4, 8) with 3-bit or narrower V: one translation unit per
// K width (decode_attention_rd_k{3,4,8}.cu, explicit instantiations) so that they compile in
// parallel; called by launch_decode_attention_rd_partials.
template <int K_BITS>
cudaError_t launch_decode_attention_rd_k(const decode_attention_params& p,
                                         const decode_attention_rd_plan& plan, cudaStream_t stream);
extern template cudaError_t launch_decode_attention_rd_k<3>(const decode_attention_params&,
                                                            const decode_attention_rd_plan&,
                                                            cudaStream_t);
extern template cudaError_t launch_decode_attention_rd_k<4>(const decode_attention_params&,
                                                            const decode_attention_rd_plan&,
                                                            cudaStream_t);
extern template cudaError_t launch_decode_attention_rd_k<8>(const decode_attention_params&,
                                                            const decode_attention_rd_plan&,
                                                            cudaStream_t);

}  // namespace kvcal
