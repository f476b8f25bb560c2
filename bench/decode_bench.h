// Decode attention benchmark at one layer's shapes (issue 11): the packed-cache kernels of
// kernels/cuda/ against torch SDPA FP16 in the same process, for `kvcal bench decode` and the
// bench_decode program.
//
// A case is a kernel configuration (fp16, or KIVI-style quantization: K per-channel groups along
// tokens, V per-token groups, asymmetric, fp16 residual window; or the V latent mode: K fp16 or
// per-channel quantized, V a PCA latent of 16/8/4 bits; or the K latent mode: K and V latents of
// one rank, e.g. ae-16). The bench has no calibration: latent cases run on a random orthonormal
// basis (synthetic data; the speed does not depend on it).
// decode_case_of() maps a preset recipe to a case, or says why the CUDA kernels cannot run it yet
// (the row is then printed as unsupported rather than silently skipped).
//
//   kvcal::decode_shape s;  s.batch = 8; s.len = 32768;            // 28 q / 4 kv heads, d 128
//   kvcal::decode_timing t = kvcal::time_decode_case(kvcal::builtin_decode_cases()[1], s);
//   kvcal::decode_timing b = kvcal::time_sdpa_fp16(s);             // the baseline, same shapes
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/preset_recipe.h"

namespace kvcal {

struct decode_case {
  std::string name;
  int bits = 16;             // 16 = fp16 K/V; 2 | 4 | 8 = quantized records
  int group = 32;            // K: tokens per channel group; V: channels per group
  int residual = 0;          // fp16 recent window (tokens) before records are made
  bool half_dequant = true;  // decode_attention_params::half_dequant
  std::string unsupported;   // non-empty: why the CUDA kernels cannot run this preset
  bool pipelined = true;     // decode_attention_params::pipelined (with half_dequant)
  // decode_attention_params::register_direct
  bool register_direct = false;
  // V latent mode (then `bits` / `group` are K's): rank 0 with v_latent = a template whose rank
  // comes from the PCA file; the caller sets one (kvcal bench --latent-rank).
  bool v_latent = false;
  int v_latent_rank = 0;             // 16 | 32 | 64
  int v_latent_bits = 16;            // 16 | 8 | 4
  std::int64_t compress_after = -1;  // adaptive presets: no records up to this many tokens
  // K latent mode (PCA / linear-AE keys, reconstruct-then-rotate; with the V latent mode of the
  // same rank only; rank 0 only for a template, the caller sets one), as runtime/packed_support
  // maps it; `bits` / `group` are then unused.
  bool k_latent = false;
  int k_latent_rank = 0;
  int k_latent_bits = 16;
  bool k_latent_ae = false;  // the recipe's K is an autoencoder (else PCA): the row's label
  bool v_latent_ae = false;
  // V records' width when it differs from K's (mixed widths, e.g. K 3-bit / V 2-bit; the
  // register-direct kernel only); 0: `bits`. Bytes read count each stream at its own width.
  int v_bits = 0;
};

struct decode_shape {
  int batch = 1, len = 4096, n_heads = 28, n_kv = 4, head_dim = 128;
  int reps = 50;  // timed launches (median), after 5 warm-up launches, L2 flushed before each
};

struct decode_timing {
  double us = 0;            // median microseconds per call (attention + split merge)
  double bytes = 0;         // bytes the kernels read (records, windows, queries, tables, partials)
  double fp16_bytes = 0;    // K/V bytes of the same tokens in fp16
  double append_tok_s = 0;  // append + compress throughput while filling the cache (0: n/a)
};

// fp16 (ours), kivi-4 and kivi-2 with and without half_dequant, kivi-4 / kivi-2 pipelined,
// kivi-4 / kivi-2 / fp16 / kivi-3 / k3v2 register-direct, and the V latent mode (synthetic PCA
// rank 32, int8) with K fp16 and K kivi-2, each with the smem-tile and the register-direct
// kernel, and the K latent mode (K and V latents of rank 16, fp16: ae-16's layout; rank 32 int8
// with a 256-token window): the development table.
std::vector<decode_case> builtin_decode_cases();
// Cases no template describes, by name, for `kvcal bench --preset NAME` and the development
// table: kivi-3 (the KIVI layout at 3 bits: K per-channel, V per-token, group 32, residual 128)
// and k3v2 (the same with V at 2 bits: mlsys-conservative's widths, without its guard, cluster
// eviction and 2048-token window, which the kernels do not run). Register-direct only.
std::vector<decode_case> bench_only_decode_cases();
// The case a recipe runs as (every layer the same; see the header comment), named `name`.
decode_case decode_case_of(const preset_recipe& r, const std::string& name);

// CUDA; a build without CUDA throws.
decode_timing time_decode_case(const decode_case& c, const decode_shape& s);
// torch SDPA on fp16 q [B, heads, 1, d], K/V [B, kv, L, d] (enable_gqa); needs libtorch CUDA.
decode_timing time_sdpa_fp16(const decode_shape& s);

// One markdown row of the table printed by both front ends.
std::string decode_table_header();
std::string decode_table_row(const std::string& method, const decode_shape& s,
                             const decode_timing& t, double fp16_ours_us, double sdpa_us);

}  // namespace kvcal
