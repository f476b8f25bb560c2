// pca.h5: the output of `kvcal fit-pca` (docs/formats/pca.md), read by `kvcal export --pca` and
// `kvcal inspect`.
//
// Layout (format "kvcal.pca", version 1):
//   root attributes
//     format       "kvcal.pca"
//     version      1 (int64)
//     model        JSON text: the model fingerprint copied from the captures (model_type,
//                  n_layers, n_kv_heads, head_dim, rope, config_sha256)
//     sources      JSON text: [{"path": ..., "sha256": ..., "n_tokens": ...}] of the captures used
//     granularity  "kv-head" (one basis per layer x KV head) | "layer" (one per layer, all heads)
//     centered     1: mean subtracted before projecting; 0: basis of the second moment E[x x^T]
//     latent_bits  16 | 8 | 4: the latent width the ranks were chosen for
//     rank_rule    JSON text: {"rank": R} | {"energy": E} | {"bytes_per_token": B, "bits": used}
//     targets      JSON text: ["k", "v"] (any of k, v, k_rope; k is before RoPE)
//     n_layers, n_kv_heads, head_dim, n_tokens (tokens used per layer)   int64
//     layers       JSON text: the fitted layer indices (those the captures recorded)
//   one group per block: /<target>/<layer>/<head>  (kv-head)  or  /<target>/<layer>/all  (layer)
//     basis        [d, d] f64  columns are the principal axes, by descending eigenvalue;
//                              the largest-|.| entry of each column is positive
//     eigenvalues  [d]    f64  descending; of the covariance with divisor count (centered = 1)
//                              or of the second moment (centered = 0)
//     mean         [d]    f64  the vector subtracted before projecting (zeros when centered = 0)
//     count        int64       vectors accumulated (tokens; tokens x heads for layer granularity)
//     rank         int64       chosen rank, 1..d
// Reconstruction at rank r: x' = mean + B[:, :r] B[:, :r]^T (x - mean).
// Versioning: readers accept exactly their version and name both numbers otherwise; new fields
// come with defaults and a version bump.
//
//   kvcal::pca_file p = kvcal::read_pca_file("pca.h5");
//   const kvcal::pca_block* b = p.find("v", 3, 1);    // layer 3, KV head 1 (any head: "layer")
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvcal {

inline constexpr const char* pca_format_name = "kvcal.pca";
inline constexpr int pca_format_version = 1;

struct pca_block {
  std::string target;  // k | v | k_rope
  std::int64_t layer = 0;
  std::int64_t head = -1;           // -1: shared by all heads of the layer (granularity "layer")
  std::vector<double> basis;        // [d, d] row-major, column j = component j
  std::vector<double> eigenvalues;  // [d]
  std::vector<double> mean;         // [d]
  std::int64_t count = 0;
  std::int64_t rank = 0;
};

struct pca_source {
  std::string path, sha256;
  std::int64_t n_tokens = 0;
};

struct pca_file {
  std::string model_json;  // fingerprint as copied from the captures
  std::vector<pca_source> sources;
  std::string granularity = "kv-head";
  bool centered = true;
  int latent_bits = 16;
  std::string rank_rule_json = "{}";
  std::vector<std::string> targets;
  std::int64_t n_layers = 0, n_kv_heads = 0, head_dim = 0, n_tokens = 0;
  std::vector<std::int64_t> layers;  // fitted layers (all of 0..n_layers-1 unless captured fewer)
  std::vector<pca_block> blocks;     // target-major, then layer, then head

  // The block for (target, layer, head); with granularity "layer" any head maps to the shared
  // block. nullptr when absent.
  const pca_block* find(const std::string& target, std::int64_t layer, std::int64_t head) const;
  bool has_target(const std::string& target) const;
};

std::string pca_block_path(const std::string& target, std::int64_t layer, std::int64_t head);

// Validates shapes, then writes atomically (path.partial, rename).
void write_pca_file(const std::string& path, const pca_file& p);
// Validates format, version, attributes and every block's shapes; errors name the file.
pca_file read_pca_file(const std::string& path);
// True when `path` is an HDF5 file whose format attribute is "kvcal.pca".
bool is_pca_file(const std::string& path);

}  // namespace kvcal
