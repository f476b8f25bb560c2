#include "runtime/compressed_cache.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <string>

#include "kernels/common/error.h"
#include "kernels/cpu/rope.h"
#include "runtime/eviction/evicting_layer.h"
#include "runtime/preset.h"
#include "runtime/rope.h"

namespace kvcal {

// One stream: K or V of one KV head of one layer. Token t of the layer is
//   sinks record t                        t < S
//   codec record (t - S) / block          S <= t < S + compressed
//   window record t - S                   otherwise (window records below `compressed` released)
struct compressed_cache::stream {
  std::unique_ptr<kv_codec> codec;
  paged_array sinks, window, records;
  std::int64_t compressed = 0;
};

struct compressed_cache::layer_state {
  std::int64_t n = 0, p0 = 0;          // tokens held, position of the first
  std::vector<stream> k, v;            // [n_kv_heads]; empty under eviction
  std::unique_ptr<evicting_layer> ev;  // token eviction / guard (runtime/eviction/)
};

namespace {

std::string stream_prefix(int layer, bool value, int head) {
  return "layers." + std::to_string(layer) + (value ? ".v" : ".k") + ".heads." +
         std::to_string(head);
}

}  // namespace

compressed_cache::compressed_cache(const preset_recipe& r, const std::vector<tensor_view>& tensors,
                                   const cache_dims& dims, const cache_options& opt,
                                   const std::string& source)
    : recipe_(r), dims_(dims), opt_(opt) {
  const int d = dims.head_dim;
  KVCAL_CHECK(dims.n_layers > 0 && dims.n_heads > 0 && dims.n_kv_heads > 0 && d > 0, source,
              ": model dimensions must be positive (layers ", dims.n_layers, ", heads ",
              dims.n_heads, ", KV heads ", dims.n_kv_heads, ", head_dim ", d, ")");
  KVCAL_CHECK(dims.n_heads % dims.n_kv_heads == 0, source, ": ", dims.n_heads,
              " attention heads are not a multiple of ", dims.n_kv_heads, " KV heads");
  KVCAL_CHECK(d % 2 == 0, source, ": head_dim ", d, " must be even (RoPE)");
  KVCAL_CHECK(r.model.n_layers == dims.n_layers, source, ": model fingerprint: n_layers is ",
              r.model.n_layers, " in the preset, ", dims.n_layers, " in the model");
  KVCAL_CHECK(r.model.n_kv_heads == dims.n_kv_heads, source, ": model fingerprint: n_kv_heads is ",
              r.model.n_kv_heads, " in the preset, ", dims.n_kv_heads, " in the model");
  KVCAL_CHECK(r.model.head_dim == d, source, ": model fingerprint: head_dim is ", r.model.head_dim,
              " in the preset, ", d, " in the model");
  KVCAL_CHECK(static_cast<int>(r.layers.size()) == dims.n_layers, source, ": the recipe has ",
              r.layers.size(), " layers, the model ", dims.n_layers);
  KVCAL_CHECK(opt.page_tokens >= 1, "page_tokens must be >= 1, got ", opt.page_tokens);
  KVCAL_CHECK(opt.sinks >= 0, "sinks must be >= 0, got ", opt.sinks);
  KVCAL_CHECK(dims.sliding_window >= 0, "sliding_window must be >= 0, got ", dims.sliding_window);
  check_preset_tensors(r, tensors, source);

  rope_ = opt.rope ? *opt.rope : r.model.rope;
  inv_freq_.resize(static_cast<std::size_t>(d / 2));
  attention_scaling_ = rope_inv_freq(rope_, d, dims.max_position_embeddings, 0, inv_freq_.data());

  const std::size_t P = static_cast<std::size_t>(opt.page_tokens);
  for (int l = 0; l < dims.n_layers; ++l) {
    const layer_recipe& lr = r.layers[static_cast<std::size_t>(l)];
    // Token policies, budgets and the guard: the layer goes to runtime/eviction/evicting_layer.
    const bool evicting = lr.policy.kind != token_policy_kind::full ||
                          lr.budget.kind != budget_kind::none || lr.guard > 0.0;
    KVCAL_CHECK(!evicting || opt.sinks == 0, source, ": layers[", l,
                "]: the sinks cache option does not combine with token policy '",
                token_policy_name(lr.policy.kind), "' / guard (use the window policy's sinks)");
    std::int64_t w = lr.residual;
    if (r.adaptive.enabled) w = std::max(w, r.adaptive.keep_recent);
    layer_window_.push_back(w);

    auto L = std::make_unique<layer_state>();
    for (int value = 0; value < 2; ++value) {
      auto& streams = value ? L->v : L->k;
      for (int h = 0; h < dims.n_kv_heads; ++h) {
        const kv_method& m =
            value ? lr.v_of(static_cast<std::size_t>(h)) : lr.k_of(static_cast<std::size_t>(h));
        stream s;
        s.codec = make_stream_codec(m, d, tensors, stream_prefix(l, value != 0, h), source,
                                    &fixed_bytes_);
        const std::size_t fp16_row = static_cast<std::size_t>(d) * 2;
        const std::size_t block = static_cast<std::size_t>(s.codec->block_tokens());
        s.sinks = paged_array(&pool_, fp16_row, P);
        s.window = paged_array(&pool_, fp16_row, P);
        s.records =
            paged_array(&pool_, s.codec->record_bytes(), std::max<std::size_t>(1, P / block));
        streams.push_back(std::move(s));
      }
    }
    if (evicting) {
      evicting_layer_params ep;
      ep.layer = l;
      ep.n_heads = dims.n_heads;
      ep.n_kv_heads = dims.n_kv_heads;
      ep.head_dim = d;
      ep.window = w;
      ep.compress_after = r.adaptive.enabled ? r.adaptive.compress_after : -1;
      ep.sliding_window = dims.sliding_window;
      ep.page_tokens = opt.page_tokens;
      std::vector<std::unique_ptr<kv_codec>> kc, vc;
      for (auto& s : L->k) kc.push_back(std::move(s.codec));
      for (auto& s : L->v) vc.push_back(std::move(s.codec));
      L->k.clear();
      L->v.clear();
      L->ev = std::make_unique<evicting_layer>(lr, ep, std::move(kc), std::move(vc), tensors,
                                               &pool_, source);
    }
    layers_.push_back(std::move(L));
  }
  int max_block = 1;
  for (const auto& L : layers_)
    for (const auto* streams : {&L->k, &L->v})
      for (const auto& s : *streams) max_block = std::max(max_block, s.codec->block_tokens());
  block_.resize(static_cast<std::size_t>(d) * static_cast<std::size_t>(max_block));  // [block, d]
}

compressed_cache::~compressed_cache() = default;

float* compressed_cache::scratch(std::vector<float>& v, std::size_t n) {
  if (v.size() < n) v.resize(n);  // allocates only beyond reserve()
  return v.data();
}

void compressed_cache::reserve(std::int64_t max_context, std::int64_t max_step) {
  KVCAL_CHECK(max_context >= 1 && max_step >= 1, "reserve: max_context ", max_context,
              " and max_step ", max_step, " must be >= 1");
  const std::size_t N = static_cast<std::size_t>(max_context);
  std::map<std::size_t, std::size_t> pages;  // page bytes -> pages needed
  std::size_t max_rank = 0;
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    if (layers_[l]->ev) layers_[l]->ev->reserve(max_context, max_step);
    std::int64_t win = layer_window_[l];
    if (recipe_.adaptive.enabled) win = std::max(win, recipe_.adaptive.compress_after);
    for (auto* streams : {&layers_[l]->k, &layers_[l]->v}) {
      for (auto& s : *streams) {
        const std::int64_t block = s.codec->block_tokens();
        const std::size_t sinks = static_cast<std::size_t>(std::min(opt_.sinks, max_context));
        const std::size_t window =
            static_cast<std::size_t>(std::min(max_context, win + block + max_step));
        const std::size_t records =
            (N + static_cast<std::size_t>(block) - 1) / static_cast<std::size_t>(block);
        pages[s.sinks.page_bytes()] += s.sinks.pages_for(sinks);
        pages[s.window.page_bytes()] += s.window.pages_for(window);
        pages[s.records.page_bytes()] += s.records.pages_for(records);
        s.sinks.reserve(sinks);
        s.window.reserve(N);
        s.records.reserve(records);
        if (s.codec->maps())
          max_rank = std::max(max_rank, static_cast<std::size_t>(s.codec->maps()->rank));
      }
    }
  }
  for (const auto& [bytes, count] : pages) pool_.prewarm(bytes, count);
  const std::size_t d = static_cast<std::size_t>(dims_.head_dim);
  scratch(k_, N * d);
  scratch(v_, N * d);
  scratch(z_, N * std::max<std::size_t>(max_rank, 1));
  scratch(scores_, N);
  scratch(cos_, N * d / 2);
  scratch(sin_, N * d / 2);
  scratch(pz_, std::max<std::size_t>(max_rank, 1));
  scratch(acc_, d);
}

void compressed_cache::append(int layer, const float* k_pre, const float* v,
                              const std::int64_t* positions, std::int64_t T,
                              const float* maybe_hidden, std::int64_t hidden_size) {
  KVCAL_CHECK(layer >= 0 && layer < dims_.n_layers, "append: layer ", layer, " out of range [0, ",
              dims_.n_layers, ")");
  KVCAL_CHECK(T >= 1, "append: no tokens");
  layer_state& L = *layers_[static_cast<std::size_t>(layer)];
  if (L.ev) {
    L.ev->append(k_pre, v, positions, T, maybe_hidden, hidden_size);
    L.n = L.ev->max_held();
    L.p0 = L.ev->first_position();
    return;
  }
  if (L.n == 0) {
    KVCAL_CHECK(positions[0] >= 0, "append: negative position ", positions[0]);
    L.p0 = positions[0];
  }
  for (std::int64_t i = 0; i < T; ++i)
    KVCAL_CHECK(positions[i] == L.p0 + L.n + i, "append: layer ", layer, " token ", i,
                " has position ", positions[i], ", expected ", L.p0 + L.n + i,
                " (positions must be consecutive; eviction will lift this)");
  const int H = dims_.n_kv_heads, d = dims_.head_dim;
  for (std::int64_t i = 0; i < T; ++i) {
    const std::int64_t t = L.n + i;
    for (int h = 0; h < H; ++h) {
      const std::size_t off = (static_cast<std::size_t>(i) * static_cast<std::size_t>(H) +
                               static_cast<std::size_t>(h)) *
                              static_cast<std::size_t>(d);
      for (int value = 0; value < 2; ++value) {
        stream& s = (value ? L.v : L.k)[static_cast<std::size_t>(h)];
        paged_array& dst = t < opt_.sinks ? s.sinks : s.window;
        encode_fp16_rows((value ? v : k_pre) + off, 1, d, dst.append());
      }
    }
  }
  L.n += T;
  // Layers reaching this point keep every token: those with a token policy other than `full` (or
  // a guard) are held by runtime/eviction/evicting_layer.h, which evicts at the end of attend().
  KVCAL_ASSERT(
      recipe_.layers[static_cast<std::size_t>(layer)].policy.kind == token_policy_kind::full,
      "an evicting layer reached the keep-everything path");
  compress(layer);
}

void compressed_cache::compress(int layer) {
  layer_state& L = *layers_[static_cast<std::size_t>(layer)];
  const bool dormant = recipe_.adaptive.enabled && L.n <= recipe_.adaptive.compress_after;
  const std::int64_t eligible =
      dormant ? 0
              : std::max<std::int64_t>(
                    0, L.n - opt_.sinks - layer_window_[static_cast<std::size_t>(layer)]);
  const int d = dims_.head_dim;
  for (auto* streams : {&L.k, &L.v}) {
    for (auto& s : *streams) {
      const std::int64_t B = s.codec->block_tokens();
      const std::int64_t target = eligible / B * B;
      KVCAL_ASSERT(static_cast<std::size_t>(B * d) <= block_.size(), "block scratch too small");
      while (s.compressed < target) {
        // The tokens are read back from their fp16 window records: the window is what the
        // cache held, so compression starts from the same fp16 values a reader saw.
        for (std::int64_t j = 0; j < B; ++j)
          decode_fp16_rows(s.window.at(static_cast<std::size_t>(s.compressed + j)), 1, d,
                           block_.data() + j * d);
        s.codec->encode(block_.data(), s.records.append());
        s.compressed += B;
      }
      s.window.release_before(static_cast<std::size_t>(s.compressed));
    }
  }
}

// out: [n, d]. With skip_latent, rows of a linear codec's compressed tokens are left untouched.
void compressed_cache::decode_stream(stream& s, std::int64_t n, bool skip_latent, float* out) {
  const int d = dims_.head_dim;
  const std::int64_t S = std::min(opt_.sinks, n);
  for (std::int64_t t = 0; t < S; ++t)
    decode_fp16_rows(s.sinks.at(static_cast<std::size_t>(t)), 1, d, out + t * d);
  const std::int64_t B = s.codec->block_tokens();
  if (!skip_latent || !s.codec->maps()) {
    for (std::int64_t b = 0; b < s.compressed / B; ++b)
      s.codec->decode(s.records.at(static_cast<std::size_t>(b)), out + (S + b * B) * d);
  }
  for (std::int64_t t = S + s.compressed; t < n; ++t)
    decode_fp16_rows(s.window.at(static_cast<std::size_t>(t - S)), 1, d, out + t * d);
}

void compressed_cache::reconstruct(int layer, int kv_head, bool value, float* out) {
  KVCAL_CHECK(layer >= 0 && layer < dims_.n_layers && kv_head >= 0 && kv_head < dims_.n_kv_heads,
              "reconstruct: layer ", layer, " / KV head ", kv_head, " out of range");
  layer_state& L = *layers_[static_cast<std::size_t>(layer)];
  if (L.ev) return L.ev->reconstruct(kv_head, value, out);
  decode_stream((value ? L.v : L.k)[static_cast<std::size_t>(kv_head)], L.n, false, out);
}

void compressed_cache::attend(int layer, const float* q_rope, const std::int64_t* positions,
                              std::int64_t T, float* out) {
  KVCAL_CHECK(layer >= 0 && layer < dims_.n_layers, "attend: layer ", layer, " out of range [0, ",
              dims_.n_layers, ")");
  KVCAL_CHECK(T >= 1, "attend: no queries");
  layer_state& L = *layers_[static_cast<std::size_t>(layer)];
  const std::int64_t n = L.n;
  KVCAL_CHECK(n >= 1, "attend: layer ", layer, " holds no tokens");
  std::int64_t max_pos = positions[0];
  for (std::int64_t t = 0; t < T; ++t) {
    KVCAL_CHECK(positions[t] >= L.p0, "attend: query position ", positions[t],
                " sees no token (the layer starts at ", L.p0, ")");
    max_pos = std::max(max_pos, positions[t]);
  }
  const int d = dims_.head_dim, half = d / 2;
  const std::size_t D = static_cast<std::size_t>(d);
  if (rope_.type == rope_type::dynamic)  // frequencies follow the sequence length
    attention_scaling_ =
        rope_inv_freq(rope_, d, dims_.max_position_embeddings, max_pos + 1, inv_freq_.data());
  if (L.ev) {
    L.ev->attend(q_rope, positions, T, out, inv_freq_.data(), attention_scaling_);
    L.n = L.ev->max_held();
    return;
  }
  float* k = scratch(k_, static_cast<std::size_t>(n) * D);
  float* v = scratch(v_, static_cast<std::size_t>(n) * D);
  float* cs = scratch(cos_, static_cast<std::size_t>(n) * D / 2);
  float* sn = scratch(sin_, static_cast<std::size_t>(n) * D / 2);
  float* sc = scratch(scores_, static_cast<std::size_t>(n));
  float* acc = scratch(acc_, D);
  // Dynamic RoPE may have changed every frequency; otherwise only new positions need tables.
  if (rope_.type == rope_type::dynamic || rope_p0_ != L.p0) rope_valid_ = 0;
  rope_p0_ = L.p0;
  for (std::int64_t t = rope_valid_; t < n; ++t)
    rope_cos_sin(L.p0 + t, inv_freq_.data(), d, attention_scaling_, cs + t * half, sn + t * half);
  rope_valid_ = std::max(rope_valid_, n);

  const int rep = dims_.n_heads / dims_.n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const std::int64_t S = std::min(opt_.sinks, n);
  for (int h = 0; h < dims_.n_kv_heads; ++h) {
    stream& ks = L.k[static_cast<std::size_t>(h)];
    stream& vs = L.v[static_cast<std::size_t>(h)];
    decode_stream(ks, n, false, k);  // pre-RoPE keys, then rotated at their positions
    for (std::int64_t t = 0; t < n; ++t) apply_rope(k + t * d, d, cs + t * half, sn + t * half);
    // Values: linear codecs stay in latent space, z: [compressed, rank].
    const linear_maps* maps = vs.codec->maps();
    const std::int64_t vc = vs.compressed;  // tokens [S, S + vc) are latents
    const int rank = maps ? maps->rank : 0;
    float* z = nullptr;
    float* pz = nullptr;
    decode_stream(vs, n, maps != nullptr, v);
    if (maps) {
      z = scratch(z_, static_cast<std::size_t>(std::max<std::int64_t>(vc, 1)) *
                          static_cast<std::size_t>(rank));
      pz = scratch(pz_, static_cast<std::size_t>(rank));
      for (std::int64_t j = 0; j < vc; ++j)
        vs.codec->decode_latent(vs.records.at(static_cast<std::size_t>(j)), z + j * rank);
    }
    for (int r = 0; r < rep; ++r) {
      const int qh = h * rep + r;
      for (std::int64_t t = 0; t < T; ++t) {
        const float* q = q_rope + (static_cast<std::int64_t>(qh) * T + t) * d;
        const std::int64_t visible = std::min(n, positions[t] - L.p0 + 1);
        const std::int64_t lo =  // first visible token under a sliding window
            dims_.sliding_window > 0
                ? std::max<std::int64_t>(0, positions[t] - dims_.sliding_window + 1 - L.p0)
                : 0;
        KVCAL_CHECK(lo < visible, "attend: query position ", positions[t],
                    " sees no held token through its sliding window");
        float mx = -std::numeric_limits<float>::infinity();
        for (std::int64_t j = lo; j < visible; ++j) {
          const float* kj = k + j * d;
          float dot = 0;
          for (int c = 0; c < d; ++c) dot += q[c] * kj[c];
          sc[j] = dot * scale;
          mx = std::max(mx, sc[j]);
        }
        double sum = 0;
        for (std::int64_t j = lo; j < visible; ++j) {
          sc[j] = std::exp(sc[j] - mx);
          sum += sc[j];
        }
        const float inv = static_cast<float>(1.0 / sum);
        std::fill(acc, acc + d, 0.0f);
        const std::int64_t lat_end = maps ? std::min(visible, S + vc) : S;
        // fp16 / reconstructed rows: sinks, then (non-latent) compressed and window.
        for (std::int64_t j = lo; j < visible; ++j) {
          if (maps && j >= S && j < lat_end) continue;
          const float p = sc[j] * inv;
          const float* vj = v + j * d;
          for (int c = 0; c < d; ++c) acc[c] += p * vj[c];
        }
        const std::int64_t lat_begin = std::max(S, lo);
        if (maps && lat_end > lat_begin) {  // (P Z) W_d^T + (sum P) b_d
          std::fill(pz, pz + rank, 0.0f);
          float psum = 0;
          for (std::int64_t j = lat_begin; j < lat_end; ++j) {
            const float p = sc[j] * inv;
            psum += p;
            const float* zj = z + (j - S) * rank;
            for (int i = 0; i < rank; ++i) pz[i] += p * zj[i];
          }
          for (int c = 0; c < d; ++c) {
            const float* w =
                &maps->dec_w[static_cast<std::size_t>(c) * static_cast<std::size_t>(rank)];
            float a = psum * maps->dec_b[static_cast<std::size_t>(c)];
            for (int i = 0; i < rank; ++i) a += w[i] * pz[i];
            acc[c] += a;
          }
        }
        std::copy(acc, acc + d, out + (static_cast<std::int64_t>(qh) * T + t) * d);
      }
    }
  }
}

std::int64_t compressed_cache::length(int layer) const {
  KVCAL_CHECK(layer >= 0 && layer < dims_.n_layers, "layer ", layer, " out of range");
  return layers_[static_cast<std::size_t>(layer)]->n;
}

std::int64_t compressed_cache::seen(int layer) const {
  KVCAL_CHECK(layer >= 0 && layer < dims_.n_layers, "layer ", layer, " out of range");
  const layer_state& L = *layers_[static_cast<std::size_t>(layer)];
  return L.ev ? L.ev->seen() : L.n;
}

const evicting_layer* compressed_cache::eviction(int layer) const {
  KVCAL_CHECK(layer >= 0 && layer < dims_.n_layers, "layer ", layer, " out of range");
  return layers_[static_cast<std::size_t>(layer)]->ev.get();
}

std::int64_t compressed_cache::first_position(int layer) const {
  KVCAL_CHECK(layer >= 0 && layer < dims_.n_layers, "layer ", layer, " out of range");
  return layers_[static_cast<std::size_t>(layer)]->p0;
}

std::int64_t compressed_cache::compressed_tokens(int layer, int kv_head, bool value) const {
  KVCAL_CHECK(layer >= 0 && layer < dims_.n_layers && kv_head >= 0 && kv_head < dims_.n_kv_heads,
              "layer ", layer, " / KV head ", kv_head, " out of range");
  const layer_state& L = *layers_[static_cast<std::size_t>(layer)];
  if (L.ev) return L.ev->compressed_tokens(kv_head, value);
  return (value ? L.v : L.k)[static_cast<std::size_t>(kv_head)].compressed;
}

cache_stats compressed_cache::stats() const {
  cache_stats st;
  st.fixed_bytes = fixed_bytes_;
  st.bytes_reserved = pool_.bytes_reserved();
  st.system_allocations = pool_.system_allocations();
  for (const auto& L : layers_) {
    if (L->ev) {  // tokens: held; fp16_bytes: the context seen (the tokens the cache stands for)
      const std::size_t held = L->ev->add_stats(st.compressed.data(), st.fp16_window, st.index,
                                                st.centroids, st.bytes_used, st.bookkeeping_bytes);
      st.reencoded += L->ev->reencoded();
      st.tokens.push_back(L->ev->max_held());
      st.layer_bytes_held.push_back(held);
      st.bytes_held += held;
      st.fp16_bytes +=
          static_cast<double>(L->ev->seen()) * dims_.n_kv_heads * dims_.head_dim * 2.0 * 2.0;
      continue;
    }
    std::size_t layer_held = 0;
    for (const auto* streams : {&L->k, &L->v}) {
      for (const auto& s : *streams) {
        method_bytes& m = st.compressed[static_cast<std::size_t>(s.codec->kind())];
        m.tokens += s.compressed;
        m.bytes_held += s.records.bytes_held();
        m.bytes_used += s.records.bytes_used();
        st.fp16_window.tokens += L->n - s.compressed;
        st.fp16_window.bytes_held += s.sinks.bytes_held() + s.window.bytes_held();
        st.fp16_window.bytes_used += s.sinks.bytes_used() + s.window.bytes_used();
        layer_held += s.records.bytes_held() + s.sinks.bytes_held() + s.window.bytes_held();
        st.bytes_used += s.records.bytes_used() + s.sinks.bytes_used() + s.window.bytes_used();
      }
    }
    st.tokens.push_back(L->n);
    st.layer_bytes_held.push_back(layer_held);
    st.bytes_held += layer_held;
    st.fp16_bytes += static_cast<double>(L->n) * dims_.n_kv_heads * dims_.head_dim * 2.0 * 2.0;
  }
  KVCAL_ASSERT(st.bytes_held == pool_.bytes_in_use(),
               "page accounting out of sync: ", st.bytes_held, " held by streams, ",
               pool_.bytes_in_use(), " in use in the pool");
  return st;
}

void compressed_cache::reset() {
  rope_valid_ = 0;
  for (auto& L : layers_) {
    L->n = L->p0 = 0;
    if (L->ev) L->ev->reset();
    for (auto* streams : {&L->k, &L->v}) {
      for (auto& s : *streams) {
        s.sinks.clear();
        s.window.clear();
        s.records.clear();
        s.compressed = 0;
      }
    }
  }
}

}  // namespace kvcal
