// Split-KV decode attention over the packed KIVI-style cache of kernels/cuda/packed_kv.h: one new
// query token per sequence, batch B, GQA. Keys are read as per-channel quantized records (or the
// fp16 window), dequantized in registers and rotated with RoPE at their own position; values as
// per-token quantized records (or the fp16 window). One pass covers records and window.
//
// Work split: CTA (split s, KV head g [x head group of 16], sequence b), 4 warps; each warp owns
// 32-token tiles (aligned to positions 32k) of the split's range and keeps its own online-softmax
// state for the query heads of g (the 16 rows of the mma tile), so each K/V element is loaded
// once for all of them. Per tile: K dequantized (fp32) and rotated into shared memory as fp16,
// S = Q K^T and O += P V on tensor cores (mma.sync m16n8k16, fp16 inputs, fp32 accumulation),
// softmax in fp32 on the S fragments. Each warp writes a partial (max, sum, unnormalized output)
// to the workspace; a second kernel merges the partials of a (b, head) by log-sum-exp.
//
// RoPE: the table rows of the CPU reference (kvcal::rope_cos_sin: cos/sin of fl(p * f) times
// attention_scaling). The kernel reads row p0 (the tile start) and row j (offset in the tile,
// j < 32, kept in shared memory): each key is rotated by its in-tile angle j f and the queries by
// the tile's angle p0 f (q . R_{p0 + j} k = (R_{p0}^T q) . (R_j k)), so the table is read once per
// 32 tokens instead of once per token. The angle differs from the reference's fl((p0 + j) * f) by
// about one fp32 ulp of p * f (5e-4 rad at p = 4096, 4e-3 rad at p = 32768), the size of the
// rounding the reference itself makes; tests/test_kernels_gpu.cpp states the resulting bound.
//
// V latent mode (kv.v_latent_rank > 0, PCA / linear-AE values, packed_kv.h): the compressed
// range [0, v_compressed) and the window range are two grids of the same kernel writing disjoint
// partials; a latent CTA attends on z (rank / 8 mma n-tiles), then projects its partial once:
// acc = dec_w (P Z) + (sum P) dec_b. Rank 16 / 32 / 64 / 96 / 128 (<= head_dim), latent bits 16 / 8
// / 4, K fp16 or 2/4/8-bit records (K and V bits need not match); half_dequant / pipelined are
// ignored (the unpipelined half_dequant K path; with register_direct at head_dim 128 the
// register-direct kernel runs the same plan). The tests bound it like half_dequant plus the fp16
// rounding of z.
//
// K latent mode (kv.k_latent_rank > 0, PCA / linear-AE keys before RoPE, packed_kv.h): the
// register-direct kernel only (register_direct, head_dim 128, with the V latent mode of the same
// rank and compressed range): per 16 tokens it reconstructs K = Z dec_w^T + dec_b on tensor cores
// straight into the score mma's A fragments, then rotates them at their positions. Anything else
// with k_latent_rank != 0 is cudaErrorInvalidValue (no fallback: the other kernels would ignore
// the latent keys).
//
// Supported: head_dim 64 / 128; bits 2 / 4 / 8 (the same for K and V, asymmetric; 3-bit and mixed
// K / V widths with register_direct only, see decode_attention_rd.h) with K group
// 32 / 64 / 128 and a V group that is a multiple of 8 dividing head_dim, or bits 16 (fp16 K and V,
// every token in the window ring); any number of query heads per KV head (16 per CTA). Anything
// else: cudaErrorInvalidValue and a message in kvcal::last_launch_error(). The launch allocates
// nothing and reads nothing back (graph safe): the caller provides workspace of
// decode_attention_workspace_size(p) bytes.
//
//   kvcal::decode_attention_params p;  p.kv = view; p.n_heads = 28; p.q = q; ...
//   std::size_t ws = kvcal::decode_attention_workspace_size(p);   // once, at plan time
//   p.workspace = ws_ptr; p.workspace_bytes = ws;
//   kvcal::check_launch(kvcal::launch_decode_attention(p, stream), "decode attention");
#pragma once

#include <cstddef>

#include "kernels/cuda/packed_kv.h"

namespace kvcal {

struct decode_attention_params {
  packed_kv_view kv;
  int n_heads = 0;                      // query heads, a multiple of kv.n_kv
  const float* q = nullptr;             // [B, n_heads, d] after RoPE, at position n_tokens[b] - 1
  const float* rope_cos = nullptr;      // [rope_rows, d / 2] rows of kvcal::rope_cos_sin (unused,
                                        // may be null, with kv.keys_rotated)
  const float* rope_sin = nullptr;      // [rope_rows, d / 2]
  int rope_rows = 0;                    // >= max_tokens
  float rope_attention_scaling = 1.0f;  // the factor already inside the tables (YaRN), else 1
  int max_tokens = 0;          // upper bound of n_tokens[b]: sizes the grid and the workspace
  float softmax_scale = 0.0f;  // 0: 1 / sqrt(d)
  void* workspace = nullptr;   // decode_attention_workspace_size(*this) bytes, 16-aligned
  std::size_t workspace_bytes = 0;
  float* out = nullptr;  // [B, n_heads, d]; a sequence with no token gets zeros
  // Dequantize and rotate keys / values in fp16 arithmetic (HFMA2; codes through the 0x6400 bit
  // pattern) instead of fp32: fewer instructions, a few more fp16 roundings (tests state both
  // bounds). On by default: 1.07-1.16x faster in every case of bench_decode on an H200
  // (docs/BENCHMARKS.md); false gives the fp32-arithmetic kernel.
  bool half_dequant = true;
  // Software-pipelined variant of the half_dequant path for quantized caches (bits 2 / 4 / 8):
  // each warp stages the next K / V half-tile's packed records in shared memory with cp.async
  // while it computes the current one, so dequantization reads shared memory (same arithmetic,
  // same results as half_dequant). Shared memory (RoPE rows kept as fp16 to pay for the stage
  // buffers): 75 KB per CTA at d 128 4-bit V group 32, 67 KB at 2-bit (3 CTAs per SM), 91-103 KB
  // at 8-bit (2 per SM). Ignored for bits 16 or half_dequant = false. On by default: 1.12-1.31x
  // faster than the unpipelined half_dequant kernel at 2 and 4 bits (B1/B8/B32, L32k, H200,
  // docs/BENCHMARKS.md); 8-bit (2 CTAs per SM) is tested but not timed yet.
  bool pipelined = true;
  // Register-direct kernel (kernels/cuda/decode_attention_rd.h, docs/runtime.md): transposed
  // products (the 8 query heads of a CTA in the mma's n), packed K / V bytes dequantized straight
  // into mma fragments, no fp16 K / V tile in shared memory; same workspace layout and merge, the
  // split plan sized for its CTAs (8 heads, 4 per SM). Covers head_dim 128 with K bits 2 / 3 / 4 /
  // 8 and V bits 2 / 3 / 4 / 8 no wider than K (K group 32 / 64 / 128, V group 16 / 32 / 64 /
  // 128), bits 16 (also keys_rotated, logits / row_stats) and the V latent mode (K fp16 or 2 / 4 /
  // 8-bit records, rank 16 - 128, latent bits 16 / 8 / 4); any other shape runs the kernels above
  // as if it were false (3-bit or mixed widths, which only this kernel reads, are then refused).
  // Same per-element arithmetic as half_dequant, other summation order; where it applies it takes
  // precedence over half_dequant / pipelined. On by default: 1.6-1.8x faster than the pipelined
  // kernel at L32k, B1 / 8 / 32 (H200, docs/BENCHMARKS.md).
  bool register_direct = true;
  // Optional outputs for score-based eviction (H2O): the kernel's own logits and softmax
  // statistics, so P[b, h, t] = exp2(logits[b, h, t] - row_stats[b, h, 0]) / row_stats[b, h, 1]
  // (log2 units: logits = q . k * softmax_scale * log2(e)). Tokens t >= n_tokens[b] are not
  // written. Null: not written (the default; no cost). The partial kernel writes the logits, the
  // merge kernel the statistics; P sums to 1 up to fp32 rounding of the merge.
  float* logits = nullptr;     // [B, n_heads, max_tokens]
  float* row_stats = nullptr;  // [B, n_heads, 2]: (max, sum) over the whole sequence
};

// Bytes of workspace the launch needs for these shapes (B, n_heads, head_dim, max_tokens; in the
// V latent mode also win_cap) and register_direct (its split plan differs: compute the size with
// the flag as it will launch).
std::size_t decode_attention_workspace_size(const decode_attention_params& p);

cudaError_t launch_decode_attention(const decode_attention_params& p, cudaStream_t stream);

}  // namespace kvcal
