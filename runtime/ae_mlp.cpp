#include "runtime/ae_mlp.h"

#include <cmath>

namespace kvcal {

namespace {

// y[o] = b[o] + sum_i w[o, i] x[i]   (w: [n_out, n_in]; b may be null)
void affine(const float* w, const float* b, const float* x, int n_in, int n_out, float* y) {
  for (int o = 0; o < n_out; ++o) {
    const float* row = w + static_cast<std::size_t>(o) * static_cast<std::size_t>(n_in);
    float acc = b ? b[o] : 0.0f;
    for (int i = 0; i < n_in; ++i) acc += row[i] * x[i];
    y[o] = acc;
  }
}

// y += w2 gelu(w1 x + b1)   (w1: [hidden, n_in], w2: [n_out, hidden]); h: [hidden] scratch.
void add_branch(const float* w1, const float* b1, const float* w2, const float* x, int n_in,
                int hidden, int n_out, float* h, float* y) {
  affine(w1, b1, x, n_in, hidden, h);
  for (int j = 0; j < hidden; ++j) h[j] = gelu_erf(h[j]);
  for (int o = 0; o < n_out; ++o) {
    const float* row = w2 + static_cast<std::size_t>(o) * static_cast<std::size_t>(hidden);
    float acc = 0.0f;
    for (int j = 0; j < hidden; ++j) acc += row[j] * h[j];
    y[o] += acc;
  }
}

}  // namespace

float gelu_erf(float x) {
  return 0.5f * x * (1.0f + std::erf(x * static_cast<float>(M_SQRT1_2)));
}

std::size_t ae_mlp_maps::bytes() const {
  return linear.bytes() + (enc_fc1_w.size() + enc_fc1_b.size() + enc_fc2_w.size() +
                           dec_fc1_w.size() + dec_fc1_b.size() + dec_fc2_w.size()) *
                              sizeof(float);
}

ae_mlp_maps ae_mlp_maps_of(const linear_maps& lin, int hidden, const float* enc_fc1_w,
                           const float* enc_fc1_b, const float* enc_fc2_w, const float* dec_fc1_w,
                           const float* dec_fc1_b, const float* dec_fc2_w) {
  ae_mlp_maps m;
  m.linear = lin;
  m.hidden = hidden;
  const std::size_t H = static_cast<std::size_t>(hidden), R = static_cast<std::size_t>(lin.rank),
                    D = static_cast<std::size_t>(lin.d);
  m.enc_fc1_w.assign(enc_fc1_w, enc_fc1_w + H * D);
  m.enc_fc1_b.assign(enc_fc1_b, enc_fc1_b + H);
  m.enc_fc2_w.assign(enc_fc2_w, enc_fc2_w + R * H);
  m.dec_fc1_w.assign(dec_fc1_w, dec_fc1_w + H * R);
  m.dec_fc1_b.assign(dec_fc1_b, dec_fc1_b + H);
  m.dec_fc2_w.assign(dec_fc2_w, dec_fc2_w + D * H);
  return m;
}

void ae_mlp_encode(const ae_mlp_maps& m, const float* x, float* z, float* h) {
  const int r = m.linear.rank, d = m.linear.d;
  affine(m.linear.enc_w.data(), m.linear.enc_b.data(), x, d, r, z);
  add_branch(m.enc_fc1_w.data(), m.enc_fc1_b.data(), m.enc_fc2_w.data(), x, d, m.hidden, r, h, z);
}

void ae_mlp_decode(const ae_mlp_maps& m, const float* z, float* out, float* h) {
  const int r = m.linear.rank, d = m.linear.d;
  affine(m.linear.dec_w.data(), m.linear.dec_b.data(), z, r, d, out);
  add_branch(m.dec_fc1_w.data(), m.dec_fc1_b.data(), m.dec_fc2_w.data(), z, r, m.hidden, d, h, out);
}

}  // namespace kvcal
