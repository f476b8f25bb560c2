// `kvcal fit-pca`: captures -> per-(layer, KV head, K|V) PCA bases in pca.h5
// (calibrate/pca_format.h), with ranks chosen by a fixed rank, an energy fraction or a byte budget
// (calibrate/rank_allocation.h), and an SVG plot of the spectra next to the output.
//
// Pipeline: captures are checked to share one model fingerprint; for every row block (block_rows
// tokens) of every capture, each (target, layer) dataset is read (the next read overlaps the
// current accumulation), checked for NaN/Inf, and merged into fp64 statistics (CPU: Eigen; GPU:
// calibrate/covariance_gpu.h). Then one batched eigensolve over all blocks, rank choice, an atomic
// write of pca.h5.
//
//   kvcal::pca_fit_params p;
//   p.captures = {"cap.h5"}; p.out = "pca.h5"; p.energy = 0.99;
//   kvcal::pca_fit_result r = kvcal::run_pca_fit(p);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "calibrate/pca_format.h"

namespace kvcal {

struct pca_fit_params {
  std::vector<std::string> captures;
  std::string out;
  std::vector<std::string> targets = {"k", "v"};  // any of k (pre-RoPE), v, k_rope
  std::string granularity = "kv-head";            // kv-head | layer
  // Rank rule: exactly one of rank > 0, energy > 0, bytes_per_token > 0; none: energy 0.99.
  int rank = 0;
  double energy = 0;
  double bytes_per_token = 0;
  int latent_bits = 16;  // 16 | 8 | 4, for the byte accounting
  bool center = true;
  std::string device = "auto";  // auto | cpu | cuda (cuda without a GPU: CPU with a warning)
  std::int64_t max_tokens = 0;  // 0 = all
  std::int64_t block_rows = 4096;
  // GPU and fp16 captures: upload fp16 as stored to the fused kernel (false: convert to fp32 on the
  // host and take the fp32 SGEMM route).
  bool gpu_fp16_kernel = true;
  bool write_svg = true;     // <out without .h5>.svg
  bool hash_sources = true;  // sha256 of every capture (streams each file once more)
};

struct pca_fit_result {
  pca_file file;
  std::string device_used, eig_solver, svg_path;
  std::int64_t bits_per_token = 0, budget_bits = 0;
  double discarded = 0, uniform_discarded = -1;
  int uniform_rank = 0;
  // read_bytes: activation bytes read from the captures (as stored); seconds_total: the whole run.
  double seconds_accumulate = 0, seconds_eig = 0, seconds_total = 0, read_bytes = 0;
};

pca_fit_result run_pca_fit(const pca_fit_params& p);

// Checks and normalizes params (errors name the option); used by the CLI before any work.
void validate_pca_fit_params(const pca_fit_params& p);

}  // namespace kvcal
