// The autoencoders of `kvcal train-ae` as libtorch tensors: every block's weights batched along
// the first dimension G (one block = one (layer[, KV head], K|V)), d = head_dim, r = latent,
// h = hidden width (docs/formats/ae.md):
//   linear  z  = W_e x + b_e                        x' = W_d z + b_d
//   mlp     z  = W_e x + b_e + E2 gelu(E1 x + c1)   x' = W_d z + b_d + D2 gelu(D1 z + c2)
// gelu is torch's default (erf). The runtime evaluates the same maps without libtorch
// (runtime/ae_mlp.h); tests compare the two.
//
//   kvcal::ae_net n = kvcal::ae_net_from_file(f, "layers.0.k.heads.1.ae.");  // G = 1
//   at::Tensor z = n.encode(x);   // x: [G, B, d] -> z: [G, B, r]
//   at::Tensor y = n.decode(z);   // -> [G, B, d] f32
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "runtime/io/safetensors.h"

namespace kvcal {

struct ae_net {
  bool mlp = false;
  at::Tensor We, be, Wd, bd;          // [G, r, d], [G, r], [G, d, r], [G, d]
  at::Tensor E1, c1, E2, D1, c2, D2;  // mlp: [G,h,d], [G,h], [G,r,h], [G,h,r], [G,h], [G,d,h]

  std::vector<at::Tensor> params() const;
  void set_params(const std::vector<at::Tensor>& p);
  ae_net clone() const;
  // `compute`: the matmul dtype (bf16 for mixed precision: fp32 master weights are cast).
  // x: [G, B, d] -> z: [G, B, r] in `compute`.
  at::Tensor encode(const at::Tensor& x, at::ScalarType compute = at::kFloat) const;
  // z: [G, B, r] -> x': [G, B, d] f32.
  at::Tensor decode(const at::Tensor& z, at::ScalarType compute = at::kFloat) const;
  // decode(encode(x)).
  at::Tensor forward(const at::Tensor& x, at::ScalarType compute = at::kFloat) const;
};

// One block (G = 1) of an ae.safetensors file (or a preset): tensors `<prefix>encoder.weight`
// ... and, when present, `<prefix>encoder.mlp.fc1.weight` ... (then mlp). Errors name the file.
ae_net ae_net_from_file(const safetensors_file& f, const std::string& prefix);

}  // namespace kvcal
