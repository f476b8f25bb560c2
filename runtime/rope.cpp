#include "runtime/rope.h"

#include <algorithm>
#include <cmath>

#include "kernels/common/error.h"

namespace kvcal {

namespace {

constexpr double pi = 3.14159265358979323846;

// 1 / base^(2i / d), in fp32 like torch.
void default_inv_freq(double base, int d, float* out) {
  for (int i = 0; i < d / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(d);
    out[i] = 1.0f / std::pow(static_cast<float>(base), e);
  }
}

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

double yarn_correction_dim(double rotations, int d, double base, double max_pos) {
  return (d * std::log(max_pos / (rotations * 2 * pi))) / (2 * std::log(base));
}

}  // namespace

float rope_inv_freq(const rope_config& r, int d, std::int64_t max_position_embeddings,
                    std::int64_t seq_len, float* inv) {
  KVCAL_CHECK(d > 0 && d % 2 == 0, "RoPE: head_dim ", d, " must be even");
  const std::int64_t orig = r.original_max_position_embeddings > 0
                                ? r.original_max_position_embeddings
                                : max_position_embeddings;
  switch (r.type) {
    case rope_type::none:
      default_inv_freq(r.theta, d, inv);
      return 1.0f;
    case rope_type::linear:
      default_inv_freq(r.theta, d, inv);
      for (int i = 0; i < d / 2; ++i) inv[i] = inv[i] / static_cast<float>(r.factor);
      return 1.0f;
    case rope_type::dynamic: {
      KVCAL_CHECK(max_position_embeddings > 0, "dynamic RoPE needs max_position_embeddings");
      const double mp = static_cast<double>(max_position_embeddings);
      const double L = std::max(static_cast<double>(seq_len), mp);
      const double base =
          r.theta * std::pow(r.factor * L / mp - (r.factor - 1), static_cast<double>(d) / (d - 2));
      default_inv_freq(base, d, inv);
      return 1.0f;
    }
    case rope_type::llama3: {
      KVCAL_CHECK(orig > 0, "llama3 RoPE needs original_max_position_embeddings");
      default_inv_freq(r.theta, d, inv);
      const double old_len = static_cast<double>(orig);
      const double low_wavelen = old_len / r.low_freq_factor;
      const double high_wavelen = old_len / r.high_freq_factor;
      for (int i = 0; i < d / 2; ++i) {
        const double f = inv[i];
        const double wavelen = 2 * pi / f;
        double out = wavelen > low_wavelen ? f / r.factor : f;
        const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
        if (medium) {
          const double smooth =
              (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
          out = (1 - smooth) * out / r.factor + smooth * out;
        }
        inv[i] = static_cast<float>(out);
      }
      return 1.0f;
    }
    case rope_type::yarn: {
      KVCAL_CHECK(orig > 0, "yarn RoPE needs original_max_position_embeddings");
      const double factor = r.factor;
      double attn = r.attention_factor;
      if (attn <= 0) {
        attn = (r.mscale != 0 && r.mscale_all_dim != 0)
                   ? yarn_get_mscale(factor, r.mscale) / yarn_get_mscale(factor, r.mscale_all_dim)
                   : yarn_get_mscale(factor, 1.0);
      }
      double low = yarn_correction_dim(r.beta_fast, d, r.theta, static_cast<double>(orig));
      double high = yarn_correction_dim(r.beta_slow, d, r.theta, static_cast<double>(orig));
      if (r.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(d - 1));
      if (low == high) high += 0.001;
      for (int i = 0; i < d / 2; ++i) {
        const float e = static_cast<float>(2 * i) / static_cast<float>(d);
        const float pos_freq = std::pow(static_cast<float>(r.theta), e);
        const float extra = 1.0f / pos_freq;
        const float inter = 1.0f / (static_cast<float>(factor) * pos_freq);
        const double ramp = std::min(std::max((i - low) / (high - low), 0.0), 1.0);
        const float ef = static_cast<float>(1.0 - ramp);  // extrapolation factor
        inv[i] = inter * (1 - ef) + extra * ef;
      }
      return static_cast<float>(attn);
    }
  }
  KVCAL_ASSERT(false, "unknown rope type");
  return 1.0f;
}

rope_frequencies rope_inv_freq(const rope_config& r, int d, std::int64_t max_position_embeddings,
                               std::int64_t seq_len) {
  rope_frequencies f;
  f.inv_freq.resize(static_cast<std::size_t>(d / 2));
  f.attention_scaling = rope_inv_freq(r, d, max_position_embeddings, seq_len, f.inv_freq.data());
  return f;
}

}  // namespace kvcal
