#include "model/llama.h"

#include <c10/core/InferenceMode.h>
#include <torch/version.h>

#include <fstream>

#include "kernels/common/error.h"

namespace kvcal {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
  // On CUDA one fused kernel (fp32 statistics, one rounding of the result) instead of the
  // seven memory passes below: ~6% of a 7B prefill and ~10% of a decode step.
  if (x.is_cuda() && x.scalar_type() == weight.scalar_type())
    return at::rms_norm(x, {x.size(-1)}, weight, eps);
#endif
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor inv_rms = xf.pow(2).mean(-1, /*keepdim=*/true).add_(eps).rsqrt_();
  return weight * (xf * inv_rms).to(x.scalar_type());
}

llama_model::llama_model(std::string dir, std::shared_ptr<const model_config> cfg,
                         std::shared_ptr<const model_weights> w, at::Device device,
                         at::ScalarType dtype)
    : dir_(std::move(dir)),
      cfg_(std::move(cfg)),
      w_(std::move(w)),
      rope_(std::make_shared<rope>(*cfg_, device)),
      device_(device),
      dtype_(dtype) {}

llama_model llama_model::load(const std::string& dir, at::Device device, at::ScalarType dtype) {
  const std::string config_path = dir + "/config.json";
  KVCAL_CHECK(std::ifstream(config_path).good(), config_path,
              ": not found (is this a Hugging Face model folder?)");
  return load(dir, read_model_config(config_path), device, dtype);
}

llama_model llama_model::load(const std::string& dir, const model_config& cfg, at::Device device,
                              at::ScalarType dtype) {
  KVCAL_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "compute dtype must be fp32, bf16 or fp16");
  KVCAL_CHECK(device.is_cuda() || dtype == at::kFloat, dir,
              ": on the CPU the model runs in fp32 (bf16/fp16 are for CUDA)");
  auto w = std::make_shared<model_weights>(load_weights(dir, cfg, device, dtype));
  return llama_model(dir, std::make_shared<model_config>(cfg), std::move(w), device, dtype);
}

at::Tensor llama_model::forward(const at::Tensor& ids_in, kv_cache& cache,
                                const forward_options& opt) const {
  // No autograd bookkeeping: fewer dispatcher steps per op (decode is launch-bound).
  c10::InferenceMode inference;
  const model_config& c = *cfg_;
  KVCAL_CHECK(ids_in.dim() == 2 && ids_in.size(1) > 0,
              "forward: ids must be [B, T] with T > 0, got ", ids_in.sizes());
  KVCAL_CHECK(ids_in.scalar_type() == at::kLong || ids_in.scalar_type() == at::kInt,
              "forward: ids must be int64 (or int32)");
  at::Tensor ids = ids_in.to(device_, at::kLong);
  if (!ids.is_cuda()) {
    // On the GPU an out-of-range id is a device-side assert; on the CPU a clear error is free.
    const std::int64_t lo = ids.min().item<std::int64_t>(), hi = ids.max().item<std::int64_t>();
    KVCAL_CHECK(lo >= 0 && hi < c.vocab_size, "forward: token id ", lo < 0 ? lo : hi,
                " outside the vocabulary [0, ", c.vocab_size, ")");
  }
  const std::int64_t B = ids.size(0), T = ids.size(1);
  const std::int64_t nq = c.num_attention_heads, nkv = c.num_key_value_heads, d = c.head_dim;
  const std::int64_t pos0 = cache.length();
  const model_weights& w = *w_;

  at::Tensor positions;  // [T] int64 on the device
  if (opt.maybe_positions.defined()) {
    KVCAL_CHECK(opt.maybe_positions.dim() == 1 && opt.maybe_positions.size(0) == T &&
                    opt.maybe_positions.device().type() == device_.type(),
                "forward: maybe_positions must be [", T, "] on ", device_.str());
    positions = opt.maybe_positions;
  } else {
    positions = at::arange(pos0, pos0 + T, at::TensorOptions().dtype(at::kLong).device(device_));
  }
  const rope_cos_sin cs = rope_->cos_sin(positions, pos0 + T - 1, dtype_);

  at::Tensor x = at::embedding(w.embed, ids);  // [B, T, hidden]
  for (std::int64_t li = 0; li < c.num_hidden_layers; ++li) {
    const layer_weights& L = w.layers[static_cast<std::size_t>(li)];
    const int layer = static_cast<int>(li);
    at::Tensor h = rms_norm(x, L.input_norm, c.rms_norm_eps);  // [B, T, hidden]
    at::Tensor qkv = at::linear(h, L.w_qkv, L.b_qkv);          // [B, T, (nq + 2 nkv) d]
    // q and k heads side by side: one RoPE application for both.
    at::Tensor qk = qkv.narrow(-1, 0, (nq + nkv) * d).view({B, T, nq + nkv, d});
    at::Tensor qk_rope = apply_rope_bthd(qk, cs);          // [B, T, nq + nkv, d]
    at::Tensor q = qk.narrow(2, 0, nq).transpose(1, 2);    // [B, nq, T, d]
    at::Tensor k = qk.narrow(2, nq, nkv).transpose(1, 2);  // [B, nkv, T, d]
    at::Tensor v = qkv.narrow(-1, (nq + nkv) * d, nkv * d).view({B, T, nkv, d}).transpose(1, 2);
    at::Tensor q_rope = qk_rope.narrow(2, 0, nq).transpose(1, 2);    // [B, nq, T, d]
    at::Tensor k_rope = qk_rope.narrow(2, nq, nkv).transpose(1, 2);  // [B, nkv, T, d]
    if (opt.maybe_hook) {
      layer_activations a;
      a.layer = layer;
      a.hidden = h;
      a.q = q;
      a.q_rope = q_rope;
      a.k = k;
      a.k_rope = k_rope;
      a.v = v;
      a.positions = positions;
      opt.maybe_hook->on_layer(a);
    }
    cache.append(layer, kv_append{k, k_rope, v, positions, h});
    at::Tensor attn = cache.attend(layer, q_rope, positions);  // [B, nq, T, d]
    attn = attn.transpose(1, 2).reshape({B, T, nq * d});
    x = x + at::linear(attn, L.w_o, L.b_o);

    at::Tensor h2 = rms_norm(x, L.post_norm, c.rms_norm_eps);
    at::Tensor gu = at::linear(h2, L.w_gate_up, L.b_gate_up);  // [B, T, 2 intermediate]
    const std::int64_t I = c.intermediate_size;
    at::Tensor act = at::silu(gu.narrow(-1, 0, I)) * gu.narrow(-1, I, I);
    x = x + at::linear(act, L.w_down, L.b_down);
  }
  if (opt.logits == logits_mode::none) return at::Tensor();
  if (opt.logits == logits_mode::last) x = x.narrow(1, T - 1, 1);
  x = rms_norm(x, w.final_norm, c.rms_norm_eps);
  return at::linear(x, w.lm_head).to(at::kFloat);  // [B, T | 1, vocab]
}

}  // namespace kvcal
