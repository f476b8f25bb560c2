#include "model/runtime_cache.h"

#include <utility>

#include "kernels/common/error.h"

namespace kvcal {

runtime_cache::runtime_cache(const model_config& cfg, const std::string& preset_path,
                             std::int64_t batch, const cache_options& opt) {
  preset_file p(preset_path);
  p.check_model(cfg, "the model's config.json");
  // The codecs copy what they need: the mapped preset may close after construction.
  build(cfg, p.recipe(), p.tensors().tensors(), batch, opt, p.path());
}

runtime_cache::runtime_cache(const model_config& cfg, const preset_recipe& r,
                             const std::vector<tensor_view>& tensors, std::int64_t batch,
                             const cache_options& opt, const std::string& source) {
  check_fingerprint(r.model, cfg, source, "the model's config.json");
  build(cfg, r, tensors, batch, opt, source);
}

void runtime_cache::build(const model_config& cfg, const preset_recipe& r,
                          const std::vector<tensor_view>& tensors, std::int64_t batch,
                          const cache_options& opt, const std::string& source) {
  KVCAL_CHECK(batch >= 1, "runtime_cache: batch ", batch, " must be >= 1");
  cache_dims dims;
  dims.n_layers = static_cast<int>(cfg.num_hidden_layers);
  dims.n_heads = static_cast<int>(cfg.num_attention_heads);
  dims.n_kv_heads = static_cast<int>(cfg.num_key_value_heads);
  dims.head_dim = static_cast<int>(cfg.head_dim);
  dims.max_position_embeddings = cfg.max_position_embeddings;
  dims.sliding_window = cfg.sliding_window;
  n_layers_ = dims.n_layers;
  n_heads_ = dims.n_heads;
  n_kv_ = dims.n_kv_heads;
  d_ = dims.head_dim;
  cache_options o = opt;
  if (!o.rope) o.rope = cfg.rope;  // equal to the preset's once the fingerprint matched
  for (std::int64_t b = 0; b < batch; ++b)
    rows_.push_back(std::make_unique<compressed_cache>(r, tensors, dims, o, source));
}

void runtime_cache::append(int layer, const kv_append& kv) {
  const at::Tensor& k = kv.k_pre;  // [B, n_kv, T, d]
  KVCAL_CHECK(k.dim() == 4 && k.size(0) == batch() && k.size(1) == n_kv_ && k.size(3) == d_,
              "runtime_cache: k_pre must be [", batch(), ", ", n_kv_, ", T, ", d_, "], got ",
              k.sizes());
  KVCAL_CHECK(kv.v.sizes() == k.sizes(), "runtime_cache: v ", kv.v.sizes(), " differs from k ",
              k.sizes());
  const std::int64_t T = k.size(2);
  KVCAL_CHECK(kv.positions.dim() == 1 && kv.positions.size(0) == T,
              "runtime_cache: positions must be [", T, "]");
  // [B, T, n_kv, d] fp32 on the CPU: the runtime's token-major layout.
  at::Tensor kc = k.to(at::kCPU, at::kFloat).permute({0, 2, 1, 3}).contiguous();
  at::Tensor vc = kv.v.to(at::kCPU, at::kFloat).permute({0, 2, 1, 3}).contiguous();
  at::Tensor pos = kv.positions.to(at::kCPU, at::kLong).contiguous();
  at::Tensor hid;  // [B, T, hidden] fp32, when the model passed it
  if (kv.hidden.defined()) {
    KVCAL_CHECK(kv.hidden.dim() == 3 && kv.hidden.size(0) == batch() && kv.hidden.size(1) == T,
                "runtime_cache: hidden must be [", batch(), ", ", T, ", hidden], got ",
                kv.hidden.sizes());
    hid = kv.hidden.to(at::kCPU, at::kFloat).contiguous();
  }
  const std::int64_t H = hid.defined() ? hid.size(2) : 0;
  const std::int64_t row = T * n_kv_ * d_;
  for (std::int64_t b = 0; b < batch(); ++b) {
    const float* maybe_hidden = hid.defined() ? hid.data_ptr<float>() + b * T * H : nullptr;
    rows_[static_cast<std::size_t>(b)]->append(layer, kc.data_ptr<float>() + b * row,
                                               vc.data_ptr<float>() + b * row,
                                               pos.data_ptr<std::int64_t>(), T, maybe_hidden, H);
  }
}

at::Tensor runtime_cache::attend(int layer, const at::Tensor& q_rope, const at::Tensor& positions) {
  KVCAL_CHECK(q_rope.dim() == 4 && q_rope.size(0) == batch() && q_rope.size(1) == n_heads_ &&
                  q_rope.size(3) == d_,
              "runtime_cache: q_rope must be [", batch(), ", ", n_heads_, ", T, ", d_, "], got ",
              q_rope.sizes());
  const std::int64_t T = q_rope.size(2);
  KVCAL_CHECK(positions.dim() == 1 && positions.size(0) == T, "runtime_cache: positions must be [",
              T, "]");
  at::Tensor q = q_rope.to(at::kCPU, at::kFloat).contiguous();  // [B, n_heads, T, d]
  at::Tensor pos = positions.to(at::kCPU, at::kLong).contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options());
  const std::int64_t row = n_heads_ * T * d_;
  for (std::int64_t b = 0; b < batch(); ++b)
    rows_[static_cast<std::size_t>(b)]->attend(layer, q.data_ptr<float>() + b * row,
                                               pos.data_ptr<std::int64_t>(), T,
                                               out.data_ptr<float>() + b * row);
  return out.to(q_rope.device(), q_rope.scalar_type());
}

std::int64_t runtime_cache::length() const {
  // The next position: tokens seen, not held (eviction drops tokens, positions go on).
  const int l = n_layers_ - 1;
  const compressed_cache& c = *rows_[0];
  return c.seen(l) == 0 ? 0 : c.first_position(l) + c.seen(l);
}

void runtime_cache::reset() {
  for (auto& r : rows_) r->reset();
}

void runtime_cache::reserve(std::int64_t max_context, std::int64_t max_step) {
  for (auto& r : rows_) r->reserve(max_context, max_step);
}

cache_stats runtime_cache::stats() const {
  cache_stats s = rows_[0]->stats();
  for (std::size_t b = 1; b < rows_.size(); ++b) {
    const cache_stats o = rows_[b]->stats();
    s.bytes_held += o.bytes_held;
    s.bytes_used += o.bytes_used;
    s.bytes_reserved += o.bytes_reserved;
    s.system_allocations += o.system_allocations;
    s.fixed_bytes += o.fixed_bytes;
    s.fp16_bytes += o.fp16_bytes;
    for (std::size_t i = 0; i < s.compressed.size(); ++i) {
      s.compressed[i].tokens += o.compressed[i].tokens;
      s.compressed[i].bytes_held += o.compressed[i].bytes_held;
      s.compressed[i].bytes_used += o.compressed[i].bytes_used;
    }
    using parts = std::pair<method_bytes*, const method_bytes*>;
    for (const parts& p : {parts{&s.fp16_window, &o.fp16_window}, parts{&s.index, &o.index},
                           parts{&s.centroids, &o.centroids}}) {
      p.first->tokens += p.second->tokens;
      p.first->bytes_held += p.second->bytes_held;
      p.first->bytes_used += p.second->bytes_used;
    }
    s.bookkeeping_bytes += o.bookkeeping_bytes;
    s.reencoded += o.reencoded;
    for (std::size_t l = 0; l < s.layer_bytes_held.size(); ++l)
      s.layer_bytes_held[l] += o.layer_bytes_held[l];
  }
  return s;
}

}  // namespace kvcal
