// Minimal reader of kvcal capture files for fit-pca: attributes and row blocks of the per-layer
// K / K-after-RoPE / V datasets, as float. (The capture module's own reader may replace it.)
//
// Capture layout (format "kvcal.capture", version 1; docs/formats/capture.md):
//   root attributes: format, version, model (JSON fingerprint), n_layers, n_kv_heads, n_heads,
//                    head_dim, n_tokens (rows valid), dtype ("float16" | "float32"), record
//   /layers/<L>/k       [N, n_kv_heads, head_dim]   keys before RoPE
//   /layers/<L>/k_rope  [N, n_kv_heads, head_dim]   keys after RoPE
//   /layers/<L>/v       [N, n_kv_heads, head_dim]
// Only the layers listed in the `layers` attribute (JSON list; absent = all) have a group.
// Only rows < n_tokens are read (N may be larger: preallocated / resumable captures).
//
//   kvcal::pca_input in("capture.h5");
//   std::vector<float> x(rows * in.info().n_kv_heads * in.info().head_dim);
//   in.read_rows(3, "v", t0, rows, x.data());   // [rows, n_kv, d]
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "calibrate/h5_array.h"

namespace kvcal {

inline constexpr const char* capture_format_name = "kvcal.capture";
inline constexpr int capture_format_version = 1;

struct capture_info {
  std::string path;
  std::string model_json;  // the fingerprint as stored (JSON text)
  std::int64_t n_layers = 0, n_kv_heads = 0, n_heads = 0, head_dim = 0, n_tokens = 0;
  std::string dtype;
  std::vector<std::int64_t> layers;  // recorded layers (attribute `layers`; default: all)
};

class pca_input {
 public:
  // Opens and validates the root attributes; errors name the file and the attribute.
  explicit pca_input(const std::string& path);

  const capture_info& info() const { return info_; }
  // Whether /layers/<layer>/<target> exists (target: k | k_rope | v).
  bool has(std::int64_t layer, const std::string& target) const;
  // Checks the dataset's shape against the attributes; errors name the dataset.
  void check_dataset(std::int64_t layer, const std::string& target) const;
  // Rows [t0, t0 + n) as float, [n, n_kv_heads, head_dim]; requires t0 + n <= n_tokens.
  void read_rows(std::int64_t layer, const std::string& target, std::int64_t t0, std::int64_t n,
                 float* out) const;

  // The same as raw fp16 bits; requires the dataset to be stored as float16.
  void read_rows_f16(std::int64_t layer, const std::string& target, std::int64_t t0, std::int64_t n,
                     std::uint16_t* out) const;

  static std::string dataset_path(std::int64_t layer, const std::string& target);

 private:
  h5_file file_;
  capture_info info_;
};

}  // namespace kvcal
