// The MLP autoencoder of `kvcal train-ae --arch mlp` (train/ae_net.h) in plain fp32 loops: the
// linear path of the linear AE plus one hidden GELU layer on each side (docs/formats/ae.md):
//   z  = W_e x + b_e + E2 gelu(E1 x + c1)     E1 [h, d], c1 [h], E2 [r, h]
//   x' = W_d z + b_d + D2 gelu(D1 z + c2)     D1 [h, r], c2 [h], D2 [d, h]
// gelu is torch's default (erf) GELU: 0.5 x (1 + erf(x / sqrt 2)). The decoder is not linear in z,
// so attention cannot run on latents: the cache reconstructs, then attends (DESIGN.md §3.2).
//
//   kvcal::ae_mlp_maps m = kvcal::ae_mlp_maps_of(lin, 64, e1_w, e1_b, e2_w, d1_w, d1_b, d2_w);
//   std::vector<float> h(m.hidden);
//   kvcal::ae_mlp_encode(m, x, z, h.data());    // x: [d]  z: [r]
//   kvcal::ae_mlp_decode(m, z, xr, h.data());   // xr: [d]
#pragma once

#include <cstddef>
#include <vector>

#include "runtime/kv_codec.h"

namespace kvcal {

// torch.nn.functional.gelu(x) with approximate='none'.
float gelu_erf(float x);

struct ae_mlp_maps {
  linear_maps linear;  // W_e, b_e, W_d, b_d
  int hidden = 0;
  std::vector<float> enc_fc1_w;  // [hidden, d]
  std::vector<float> enc_fc1_b;  // [hidden]
  std::vector<float> enc_fc2_w;  // [rank, hidden]
  std::vector<float> dec_fc1_w;  // [hidden, rank]
  std::vector<float> dec_fc1_b;  // [hidden]
  std::vector<float> dec_fc2_w;  // [d, hidden]
  std::size_t bytes() const;
};

// Copies the branch weights (shapes as in ae_mlp_maps) next to the linear path `lin`.
ae_mlp_maps ae_mlp_maps_of(const linear_maps& lin, int hidden, const float* enc_fc1_w,
                           const float* enc_fc1_b, const float* enc_fc2_w, const float* dec_fc1_w,
                           const float* dec_fc1_b, const float* dec_fc2_w);

// x: [d] -> z: [rank]; h: [hidden] scratch.
void ae_mlp_encode(const ae_mlp_maps& m, const float* x, float* z, float* h);
// z: [rank] -> out: [d]; h: [hidden] scratch.
void ae_mlp_decode(const ae_mlp_maps& m, const float* z, float* out, float* h);

}  // namespace kvcal
