// Pieces train-ae and train-policy share: the device, the learning-rate schedule (linear warm-up
// then cosine), RoPE in torch with the runtime's frequencies, the model's causal / sliding-window
// attention mask, the model fingerprint as JSON, and the little SVG writer of the reports.
//
//   at::Device dev = kvcal::training_device("auto");
//   double lr = kvcal::cosine_lr(step, total, 3e-3);
//   kvcal::torch_rope rope(model_json, head_dim, seq_len);    // from a capture's fingerprint
//   at::Tensor kr = rope.apply(k, pos);                        // k: [..., T, d], pos: [T]
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <deque>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/io/safetensors.h"

namespace kvcal {

// "cpu" | "cuda" | "auto" (cuda when libtorch sees a GPU). "cuda" without one is an error.
at::Device training_device(const std::string& name);

// Learning rate at `step` of `total`: linear warm-up over min(100, total / 20) steps, then cosine
// from lr down to lr / 10.
double cosine_lr(std::int64_t step, std::int64_t total, double lr);

// RoPE (rotate-half, as the runtime: kernels/cpu/rope.h) with frequencies from runtime/rope.h for
// the RoPE parameters of a capture's model fingerprint.
class torch_rope {
 public:
  torch_rope(const std::string& model_json, std::int64_t head_dim, std::int64_t seq_len);
  // x: [..., T, d]; pos: [T] int64 positions. Returns the rotated copy (autograd-friendly).
  at::Tensor apply(const at::Tensor& x, const at::Tensor& pos) const;

 private:
  at::Tensor inv_freq_;  // [d / 2] f32
  float scaling_ = 1.0f;
};

// The fingerprint JSON object of a capture ("model" attribute), for output metadata.
nlohmann::json fingerprint_json(const std::string& model_json);

// Causal attention probabilities within one sequence, masked as the model masks them
// (model/full_cache.h): a query at position p sees the keys at positions j <= p and, with a
// sliding window w > 0, only those with p - w < j. Scores in fp32 scaled by 1 / sqrt(d).
// q: [..., rep, T, d] and k: [..., T, d], both after RoPE; pos: [T] int64 positions
// -> [..., rep, T (query), T (key)] f32.
at::Tensor sequence_attention_probs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& pos,
                                    std::int64_t window);

// A plain SVG line chart: one polyline per series over labelled x points, legend, y axis from 0.
struct svg_series {
  std::string name, color;
  bool dashed = false;
  std::vector<double> y;  // one per x
};
std::string line_chart_svg(const std::string& title, const std::string& x_label,
                           const std::string& y_label, const std::vector<std::string>& x,
                           const std::vector<svg_series>& series);
// x = layer.
std::string line_chart_svg(const std::string& title, const std::string& y_label,
                           const std::vector<int>& x, const std::vector<svg_series>& series);

// Output tensors collected as fp32 on the CPU, then written as one safetensors file.
class f32_tensor_file {
 public:
  void add(const std::string& name, const at::Tensor& t);  // any shape, copied
  void write(const std::string& path, const std::map<std::string, std::string>& metadata) const;

 private:
  std::deque<std::vector<float>> store_;  // stable addresses for tensors_
  std::vector<tensor_out> tensors_;
};

// `path` without a trailing ".safetensors" (for the report files next to it).
std::string output_stem(const std::string& path);

}  // namespace kvcal
