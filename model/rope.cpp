#include "model/rope.h"

#include <algorithm>
#include <cmath>

#include "kernels/common/error.h"

namespace kvcal {
namespace {

constexpr double pi = 3.14159265358979323846;

// arange(0, dim, 2, int64).float() / dim   -> [dim/2] fp32
at::Tensor exponents(std::int64_t dim) {
  return at::arange(0, dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) /
         static_cast<double>(dim);
}

// 1.0 / (base ** exponents)   (python float base, fp32 tensor exponent -> fp32)
at::Tensor default_inv_freq(double base, std::int64_t dim) {
  return at::reciprocal(at::pow(base, exponents(dim)));
}

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

rope_params yarn(const model_config& cfg) {
  const rope_config& r = cfg.rope;
  const std::int64_t dim = cfg.head_dim;
  const double base = r.theta;
  const std::int64_t original = r.original_max_position_embeddings > 0
                                    ? r.original_max_position_embeddings
                                    : cfg.max_position_embeddings;
  const double factor = r.factor;
  double attention_factor = r.attention_factor;
  if (attention_factor <= 0) {
    if (r.mscale != 0 && r.mscale_all_dim != 0)
      attention_factor =
          yarn_get_mscale(factor, r.mscale) / yarn_get_mscale(factor, r.mscale_all_dim);
    else
      attention_factor = yarn_get_mscale(factor, 1.0);
  }
  const double beta_fast = r.beta_fast != 0 ? r.beta_fast : 32.0;
  const double beta_slow = r.beta_slow != 0 ? r.beta_slow : 1.0;
  auto correction_dim = [&](double rotations) {
    return (static_cast<double>(dim) *
            std::log(static_cast<double>(original) / (rotations * 2 * pi))) /
           (2 * std::log(base));
  };
  double low = correction_dim(beta_fast), high = correction_dim(beta_slow);
  if (r.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // prevent singularity, as transformers
  at::Tensor pos_freqs = at::pow(base, exponents(dim));
  at::Tensor extrapolation = at::reciprocal(pos_freqs);
  at::Tensor interpolation = at::reciprocal(factor * pos_freqs);
  at::Tensor ramp = at::clamp(
      (at::arange(dim / 2, at::TensorOptions().dtype(at::kFloat)) - low) / (high - low), 0, 1);
  at::Tensor extrapolation_factor = 1 - ramp;
  at::Tensor inv_freq =
      interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
  return {inv_freq, attention_factor};
}

rope_params llama3(const model_config& cfg) {
  const rope_config& r = cfg.rope;
  at::Tensor inv_freq = default_inv_freq(r.theta, cfg.head_dim);
  const double factor = r.factor;
  const double old_context = static_cast<double>(r.original_max_position_embeddings);
  const double low_freq_wavelen = old_context / r.low_freq_factor;
  const double high_freq_wavelen = old_context / r.high_freq_factor;
  at::Tensor wavelen = (2 * pi) / inv_freq;
  at::Tensor inv_freq_llama = at::where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq);
  at::Tensor smooth =
      (old_context / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
  at::Tensor smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama;
  at::Tensor is_medium =
      at::logical_not(wavelen < high_freq_wavelen).mul(at::logical_not(wavelen > low_freq_wavelen));
  return {at::where(is_medium, smoothed, inv_freq_llama), 1.0};
}

rope_params dynamic(const model_config& cfg, std::int64_t seq_len) {
  const rope_config& r = cfg.rope;
  const std::int64_t dim = cfg.head_dim;
  const std::int64_t mpe = cfg.max_position_embeddings;
  if (seq_len <= mpe) {
    // At init transformers evaluates the formula with python floats at seq_len = mpe.
    const double s = static_cast<double>(mpe);
    const double base =
        r.theta * std::pow((r.factor * s / static_cast<double>(mpe)) - (r.factor - 1),
                           static_cast<double>(dim) / static_cast<double>(dim - 2));
    return {default_inv_freq(base, dim), 1.0};
  }
  // During a forward seq_len is an int64 tensor: the new base is computed in fp32 tensors.
  at::Tensor s = at::scalar_tensor(seq_len, at::TensorOptions().dtype(at::kLong));
  at::Tensor scaled = (s * r.factor) / static_cast<double>(mpe);  // int64 * float -> fp32
  scaled = scaled.to(at::kFloat) - (r.factor - 1);
  at::Tensor base =
      r.theta * at::pow(scaled, static_cast<double>(dim) / static_cast<double>(dim - 2));
  return {at::reciprocal(at::pow(base, exponents(dim))), 1.0};
}

}  // namespace

rope_params compute_rope_params(const model_config& cfg, std::int64_t seq_len) {
  KVCAL_CHECK(cfg.head_dim > 0 && cfg.head_dim % 2 == 0, "RoPE: head_dim ", cfg.head_dim,
              " must be positive and even");
  KVCAL_CHECK(cfg.rope.partial_rotary_factor == 1.0, "RoPE: partial_rotary_factor ",
              cfg.rope.partial_rotary_factor, " is not supported");
  switch (cfg.rope.type) {
    case rope_type::none:
      return {default_inv_freq(cfg.rope.theta, cfg.head_dim), 1.0};
    case rope_type::linear:
      return {default_inv_freq(cfg.rope.theta, cfg.head_dim) / cfg.rope.factor, 1.0};
    case rope_type::dynamic:
      return dynamic(cfg, seq_len);
    case rope_type::llama3:
      return llama3(cfg);
    case rope_type::yarn:
      return yarn(cfg);
  }
  KVCAL_FAIL("RoPE: unsupported rope type ", static_cast<int>(cfg.rope.type));
}

rope::rope(const model_config& cfg, at::Device device)
    : cfg_(cfg), base_(compute_rope_params(cfg, 0)), device_inv_freq_(base_.inv_freq.to(device)) {}

rope_cos_sin rope::cos_sin(const at::Tensor& positions, at::ScalarType dtype) const {
  std::int64_t max_position = 0;
  if (cfg_.rope.type == rope_type::dynamic && positions.numel() > 0)
    max_position = positions.max().item<std::int64_t>();
  return cos_sin(positions, max_position, dtype);
}

rope_cos_sin rope::cos_sin(const at::Tensor& positions, std::int64_t max_position,
                           at::ScalarType dtype) const {
  KVCAL_CHECK(positions.dim() == 1, "RoPE: positions must be 1-D, got ", positions.dim(), "-D");
  const at::Device device = positions.device();
  at::Tensor inv_freq;
  double scaling = base_.attention_scaling;
  if (cfg_.rope.type == rope_type::dynamic && max_position + 1 > cfg_.max_position_embeddings) {
    rope_params p = compute_rope_params(cfg_, max_position + 1);
    inv_freq = p.inv_freq.to(device);
    scaling = p.attention_scaling;
  } else {
    inv_freq = device_inv_freq_.device() == device ? device_inv_freq_ : base_.inv_freq.to(device);
  }
  // freqs[t, i] = position[t] * inv_freq[i] in fp32 (transformers: a [d/2,1] x [1,T] matmul,
  // i.e. single products), emb = cat(freqs, freqs).
  at::Tensor freqs = at::outer(positions.to(at::kFloat), inv_freq);  // [T, d/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);                      // [T, d]
  at::Tensor cos = emb.cos(), sin = emb.sin();
  if (scaling != 1.0) {
    cos = cos * scaling;
    sin = sin * scaling;
  }
  const std::int64_t half = cos.size(-1) / 2;
  at::Tensor sin_rot = at::cat({-sin.narrow(-1, 0, half), sin.narrow(-1, half, half)}, -1);
  return {cos.to(dtype), sin.to(dtype), sin_rot.to(dtype)};
}

namespace {

// x cos + cat(x2, x1) sin_rot == x cos + rotate_half(x) sin  (the signs live in sin_rot).
at::Tensor rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin_rot) {
  const std::int64_t half = x.size(-1) / 2;
  at::Tensor swapped = at::cat({x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  at::Tensor out = x * cos;
  out.addcmul_(swapped, sin_rot);
  return out;
}

}  // namespace

at::Tensor apply_rope(const at::Tensor& x, const rope_cos_sin& cs) {
  return rotate(x, cs.cos, cs.sin_rot);  // cos/sin [T, d] broadcast over [B, H, T, d]
}

at::Tensor apply_rope_bthd(const at::Tensor& x, const rope_cos_sin& cs) {
  return rotate(x, cs.cos.unsqueeze(1), cs.sin_rot.unsqueeze(1));  // [T, 1, d] over [B, T, H, d]
}

}  // namespace kvcal
