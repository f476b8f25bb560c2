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

// Shapes the register-direct kernel covers: head_dim 128, bits 2 / 4 / 8 (K and V), K group
// 32 / 64 / 128, V group 16 / 32 / 64 / 128 (a lane's 16 value channels share one scale). Depends
// on the shape only, so the split plan (and the workspace size) agree with the launch.
bool decode_attention_rd_supported(const decode_attention_params& p);

// Writes the partials of grid (splits, n_kv * ceil(G / 8), B) CTAs, split s covering the 32-token
// tiles [s * tiles_per_split, (s + 1) * tiles_per_split): the split plan of decode_attention.cu.
// p is validated by launch_decode_attention (softmax_scale and rope_attention_scaling resolved).
cudaError_t launch_decode_attention_rd_partials(const decode_attention_params& p, int splits,
                                                int tiles_per_split, int n_parts,
                                                cudaStream_t stream);

}  // namespace kvcal
