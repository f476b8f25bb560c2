#include "model/gpu_packed_cache.h"

#include <algorithm>
#include <cmath>

#include "kernels/common/error.h"
#include "kernels/cpu/rope.h"
#include "model/attention_lse.h"
#include "model/full_cache.h"
#include "model/gpu_learned_scorer.h"
#include "runtime/rope.h"

#if KVCAL_TORCH_CUDA && KVCAL_WITH_CUDA
#define KVCAL_GPU_PACKED 1
#include <c10/cuda/CUDAStream.h>

#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/evict.h"
#include "kernels/cuda/h2o_prompt.h"
#include "kernels/cuda/h2o_score.h"
#include "kernels/cuda/kv_counters.h"
#include "kernels/cuda/kv_step.h"
#include "kernels/cuda/latent_append.h"
#include "kernels/cuda/packed_kv.h"
#include "kernels/cuda/quant_append.h"
#include "model/h2o_prompt_params.h"
#endif

namespace kvcal {

#ifndef KVCAL_GPU_PACKED

struct gpu_packed_cache::layer_state {};
struct gpu_packed_cache::device_maps {};

gpu_packed_cache::gpu_packed_cache(const model_config&, std::int64_t, std::int64_t, const options&,
                                   at::Device)
    : batch_(0), capacity_(0), n_kv_(0), n_heads_(0), d_(0), window_(0) {
  KVCAL_FAIL(
      "gpu_packed_cache: this kvcal was built without CUDA kernels or without libtorch "
      "CUDA (scripts/build-gpu.sh)");
}
gpu_packed_cache::~gpu_packed_cache() = default;
void gpu_packed_cache::append(int, const kv_append&) {}
at::Tensor gpu_packed_cache::attend(int, const at::Tensor&, const at::Tensor&) {
  return {};
}
std::int64_t gpu_packed_cache::length() const {
  return 0;
}
void gpu_packed_cache::reset() {}
std::size_t gpu_packed_cache::bytes_allocated() const {
  return 0;
}
std::size_t gpu_packed_cache::bytes_used() const {
  return 0;
}
std::size_t gpu_packed_cache::fixed_bytes() const {
  return 0;
}
std::int64_t gpu_packed_cache::held(int) const {
  return 0;
}
at::Tensor gpu_packed_cache::prompt_evict(int, const at::Tensor&) {
  return {};
}
void gpu_packed_cache::step_counters(int) {}
void gpu_packed_cache::set_host_length(std::int64_t) {}
std::pair<at::Tensor, at::Tensor> gpu_packed_cache::held_rows(int) const {
  return {};
}
std::vector<int> gpu_packed_cache::device_counters(int) const {
  return {};
}

#else

namespace {

evict_budget budget_of(const gpu_packed_cache::options& o) {
  evict_budget b;
  if (o.window) {
    b.window_policy = true;
    b.sinks = o.sinks;
    b.tokens = o.sinks + o.recent;
    return b;
  }
  b.retain = o.retain;
  b.tokens = o.tokens;
  b.heavy = o.learned ? 1.0 : o.heavy;  // learned: only the fp16 window is protected
  b.window = o.residual;
  return b;
}

// Writes `vals` (one per row, every sequence alike) to the device counters ctr [rows * B].
void put_counters(at::Tensor& ctr, const std::int64_t* vals, int rows, std::int64_t B) {
  at::Tensor h = at::empty({rows * B}, at::TensorOptions().dtype(at::kInt).pinned_memory(true));
  int* hp = h.data_ptr<int>();
  for (int r = 0; r < rows; ++r)
    for (std::int64_t b = 0; b < B; ++b) hp[r * B + b] = static_cast<int>(vals[r]);
  ctr.copy_(h, /*non_blocking=*/true);
}

bool latent_rank_ok(int r, std::int64_t d) {
  return (r == 16 || r == 32 || r == 64 || r == 96 || r == 128) && r <= d;
}

}  // namespace

// One layer's latent maps on the device, fp32 (kernels/cuda/packed_kv.h):
//   enc_w [n_kv, r, d]  enc_b [n_kv, r]  dec_w [n_kv, d, r]  dec_b [n_kv, d]
struct gpu_packed_cache::device_maps {
  at::Tensor enc_w, enc_b, dec_w, dec_b;
  std::size_t bytes() const {
    return enc_w.defined() ? static_cast<std::size_t>(enc_w.nbytes() + enc_b.nbytes() +
                                                      dec_w.nbytes() + dec_b.nbytes())
                           : 0;
  }
  // heads: one linear_maps per KV head (rank r, dim d), checked against the cache's shapes.
  static device_maps upload(const std::vector<linear_maps>& heads, std::int64_t n_kv, int r,
                            std::int64_t d, at::Device device, const char* what, int layer) {
    KVCAL_CHECK(static_cast<std::int64_t>(heads.size()) == n_kv, "gpu_packed_cache: ", what,
                " maps of layer ", layer, " have ", heads.size(), " KV heads, the model ", n_kv);
    const std::size_t R = static_cast<std::size_t>(r), D = static_cast<std::size_t>(d);
    std::vector<float> ew, eb, dw, db;
    for (std::size_t h = 0; h < heads.size(); ++h) {
      const linear_maps& m = heads[h];
      KVCAL_CHECK(m.rank == r && m.d == d && m.enc_w.size() == R * D && m.enc_b.size() == R &&
                      m.dec_w.size() == D * R && m.dec_b.size() == D,
                  "gpu_packed_cache: ", what, " maps of layer ", layer, " KV head ", h,
                  " are rank ", m.rank, " x dim ", m.d, ", the cache's ", r, " x ", d);
      ew.insert(ew.end(), m.enc_w.begin(), m.enc_w.end());
      eb.insert(eb.end(), m.enc_b.begin(), m.enc_b.end());
      dw.insert(dw.end(), m.dec_w.begin(), m.dec_w.end());
      db.insert(db.end(), m.dec_b.begin(), m.dec_b.end());
    }
    auto up = [&](const std::vector<float>& v, at::IntArrayRef shape) {
      return at::from_blob(const_cast<float*>(v.data()), shape, at::kFloat).to(device);
    };
    device_maps dm;
    dm.enc_w = up(ew, {n_kv, r, d});
    dm.enc_b = up(eb, {n_kv, r});
    dm.dec_w = up(dw, {n_kv, d, r});
    dm.dec_b = up(db, {n_kv, d});
    return dm;
  }
};

struct gpu_packed_cache::layer_state {
  at::Tensor k_rec, v_rec, k_win, v_win, ctr;  // ctr: [kv_ctr_rows * B] int32 (kv_counters.h)
  std::int64_t n = 0, kc = 0, vc = 0;          // host copies (every sequence alike)
  at::Tensor prompt_k, prompt_v;               // K after RoPE / V of a prompt, for its attend
  packed_kv_view view;                         // pointers filled, counters per use
  // H2O: [B * n_kv, rows] positions / scores, counters [ev_rows * B], rows held (host).
  at::Tensor pos, score, ectr;
  std::int64_t held = 0;
  at::Tensor prompt_score;  // learned: a prompt's scores [B, n_kv, T] fp32, for prompt_evict
  device_maps v_maps;       // V latent mode
  device_maps k_maps;       // K latent mode
};

gpu_packed_cache::gpu_packed_cache(const model_config& cfg, std::int64_t batch,
                                   std::int64_t capacity, const options& o, at::Device device)
    : batch_(batch),
      capacity_(capacity),
      n_kv_(cfg.num_key_value_heads),
      n_heads_(cfg.num_attention_heads),
      d_(cfg.head_dim),
      window_(cfg.sliding_window),
      o_(o) {
  KVCAL_CHECK(device.is_cuda(), "gpu_packed_cache: needs a CUDA device, got ", device.str());
  KVCAL_CHECK(batch >= 1 && capacity >= 32, "gpu_packed_cache: batch ", batch, " and capacity ",
              capacity, " must be >= 1 and >= 32");
  KVCAL_CHECK(o.bits == 16 || o.bits == 2 || o.bits == 4 || o.bits == 8, "gpu_packed_cache: bits ",
              o.bits, " (2, 4, 8 or 16)");
  KVCAL_CHECK(o.bits == 16 || o.group == 32 || o.group == 64 || o.group == 128,
              "gpu_packed_cache: group ", o.group, " (32, 64, 128)");
  KVCAL_CHECK(o.residual >= 0 && o.piece >= 1, "gpu_packed_cache: residual and piece");
  KVCAL_CHECK(int{o.h2o} + int{o.window} + int{o.learned != nullptr} <= 1,
              "gpu_packed_cache: h2o, window and learned eviction are exclusive");
  KVCAL_CHECK(
      !o.learned || ((o.retain > 0.0 && o.retain <= 1.0) || (o.retain == 0.0 && o.tokens >= 1)),
      "gpu_packed_cache: learned eviction budget retain ", o.retain, " / tokens ", o.tokens,
      " (retain in (0, 1] or tokens >= 1)");
  KVCAL_CHECK(!o.learned || (o.learned->n_layers() == cfg.num_hidden_layers &&
                             o.learned->n_kv_heads() == cfg.num_key_value_heads),
              "gpu_packed_cache: the learned scorer has ", o.learned ? o.learned->n_layers() : 0,
              " layers / ", o.learned ? o.learned->n_kv_heads() : 0, " KV heads, the model ",
              cfg.num_hidden_layers, " / ", cfg.num_key_value_heads);
  KVCAL_CHECK(!o.window || (o.sinks >= 0 && o.recent >= 0 && o.sinks + o.recent >= 1),
              "gpu_packed_cache: window eviction needs sinks, recent >= 0 and sinks + recent >= 1, "
              "got ",
              o.sinks, " + ", o.recent);
  KVCAL_CHECK(!o.evicts() || o.bits == 16, "gpu_packed_cache: eviction needs fp16 (bits 16), got ",
              o.bits);
  // K latents: only the register-direct kernel reads them (kernels/cuda/decode_attention_rd.h).
  KVCAL_CHECK(o.k_latent_rank >= 0, "gpu_packed_cache: K latent rank ", o.k_latent_rank);
  KVCAL_CHECK(!o.k_latent() || (o.v_latent() && o.k_latent_rank == o.v_latent_rank),
              "gpu_packed_cache: K latent rank ", o.k_latent_rank,
              " needs the V latent mode of the same rank (V latent rank ", o.v_latent_rank, ")");
  KVCAL_CHECK(!o.k_latent() || cfg.head_dim == 128, "gpu_packed_cache: the K latent mode needs ",
              "head_dim 128 (the register-direct kernel), the model has ", cfg.head_dim);
  KVCAL_CHECK(!o.k_latent() || o.bits == 16, "gpu_packed_cache: K latent with K bits ", o.bits,
              " (the K records are the latents: bits must be 16)");
  KVCAL_CHECK(
      !o.k_latent() || o.k_latent_bits == 16 || o.k_latent_bits == 8 || o.k_latent_bits == 4,
      "gpu_packed_cache: K latent bits ", o.k_latent_bits, " (16, 8 or 4)");
  KVCAL_CHECK(!o.k_latent() || (o.k_maps && static_cast<std::int64_t>(o.k_maps->size()) ==
                                                cfg.num_hidden_layers),
              "gpu_packed_cache: the K latent mode needs the maps of all ", cfg.num_hidden_layers,
              " layers, got ", o.k_maps ? o.k_maps->size() : 0);
  KVCAL_CHECK(!o.evicts() || (!o.v_latent() && o.compress_after < 0),
              "gpu_packed_cache: eviction with V latents or the adaptive mode is not supported");
  KVCAL_CHECK(o.compress_after >= -1, "gpu_packed_cache: compress_after ", o.compress_after,
              " (-1: off, else >= 0)");
  KVCAL_CHECK(o.v_latent_rank >= 0, "gpu_packed_cache: V latent rank ", o.v_latent_rank);
  KVCAL_CHECK(!o.v_latent() || latent_rank_ok(o.v_latent_rank, cfg.head_dim),
              "gpu_packed_cache: V latent rank ", o.v_latent_rank,
              " (16, 32, 64, 96 or 128, at most head_dim ", cfg.head_dim, ")");
  KVCAL_CHECK(
      !o.v_latent() || o.v_latent_bits == 16 || o.v_latent_bits == 8 || o.v_latent_bits == 4,
      "gpu_packed_cache: V latent bits ", o.v_latent_bits, " (16, 8 or 4)");
  KVCAL_CHECK(!o.v_latent() || (o.v_maps && static_cast<std::int64_t>(o.v_maps->size()) ==
                                                cfg.num_hidden_layers),
              "gpu_packed_cache: the V latent mode needs the maps of all ", cfg.num_hidden_layers,
              " layers, got ", o.v_maps ? o.v_maps->size() : 0);
  KVCAL_CHECK(!o.h2o || (o.retain > 0.0 && o.retain <= 1.0) || (o.retain == 0.0 && o.tokens >= 1),
              "gpu_packed_cache: H2O budget retain ", o.retain, " / tokens ", o.tokens,
              " (retain in (0, 1] or tokens >= 1)");
  KVCAL_CHECK(!o.h2o || (o.heavy >= 0.0 && o.heavy <= 1.0), "gpu_packed_cache: H2O heavy ", o.heavy,
              " (in [0, 1])");
  KVCAL_CHECK(window_ <= 0 || window_ >= capacity, "gpu_packed_cache: the model's sliding window (",
              window_, ") is shorter than the capacity: not supported by the kernels");
  const bool latent = o.v_latent();
  const bool klatent = o.k_latent();
  const bool kfp16 = o.bits == 16 && !klatent;  // K: every key in the ring
  const bool fp16 = kfp16 && !latent;           // nothing compressed
  rule_.residual = o.residual;
  rule_.group = klatent ? 1 : o.group;  // K latents: one record per token, as V's
  rule_.k_quant = !kfp16;
  rule_.v_quant = !fp16;
  rule_.compress_after = o.compress_after;
  // The ring holds every token not yet in records of both streams: at most residual + group - 1
  // plus a piece, or, dormant (adaptive), compress_after plus a piece.
  const std::int64_t ring =
      std::max<std::int64_t>(o.residual + rule_.group, o.compress_after) + o.piece;
  win_cap_ = static_cast<int>(kfp16 ? capacity : std::min<std::int64_t>(capacity, ring));
  // H2O: R is non-decreasing in the tokens seen, so R(capacity) + 1 rows hold every step.
  if (o.evicts()) win_cap_ = static_cast<int>(evict_retained(budget_of(o), capacity) + 1);
  const int d = static_cast<int>(d_);
  const auto u8 = at::TensorOptions().dtype(at::kByte).device(device);
  const auto f16 = at::TensorOptions().dtype(at::kHalf).device(device);
  const std::int64_t slots = batch * n_kv_;
  // K records: KIVI blocks of `group` tokens, or one latent record per token.
  const std::int64_t k_slot = kfp16 ? 0 : klatent ? capacity : capacity / o.group + 1;
  const std::int64_t v_slot = fp16 ? 0 : capacity;
  const std::size_t k_rb = klatent ? latent_record_bytes_of(o.k_latent_rank, o.k_latent_bits)
                                   : k_record_bytes(d, o.bits, o.group);
  const std::size_t v_rb = latent ? latent_record_bytes_of(o.v_latent_rank, o.v_latent_bits)
                                  : v_record_bytes(d, o.bits, o.group);
  for (std::int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    auto s = std::make_unique<layer_state>();
    s->k_rec = at::empty(
        {std::max<std::int64_t>(1, slots * k_slot * static_cast<std::int64_t>(k_rb))}, u8);
    s->v_rec = at::empty(
        {std::max<std::int64_t>(1, slots * v_slot * static_cast<std::int64_t>(v_rb))}, u8);
    s->k_win = at::empty({slots, win_cap_, d_}, f16);
    s->v_win = at::empty({slots, win_cap_, d_}, f16);
    s->ctr = at::zeros({kv_ctr_rows * batch}, at::TensorOptions().dtype(at::kInt).device(device));
    packed_kv_view& v = s->view;
    v.batch = static_cast<int>(batch);
    v.n_kv = static_cast<int>(n_kv_);
    v.head_dim = d;
    v.k_bits = o.bits;
    v.v_bits = latent ? 16 : o.bits;  // the latent mode ignores v_bits / v_group
    v.k_group = kfp16 || klatent ? 32 : o.group;
    v.v_group = fp16 || latent ? 32 : o.group;
    if (latent) {
      s->v_maps = device_maps::upload((*o.v_maps)[static_cast<std::size_t>(l)], n_kv_,
                                      o.v_latent_rank, d_, device, "V", static_cast<int>(l));
      v.v_latent_rank = o.v_latent_rank;
      v.v_latent_bits = o.v_latent_bits;
      v.v_enc_w = s->v_maps.enc_w.data_ptr<float>();
      v.v_enc_b = s->v_maps.enc_b.data_ptr<float>();
      v.v_dec_w = s->v_maps.dec_w.data_ptr<float>();
      v.v_dec_b = s->v_maps.dec_b.data_ptr<float>();
    }
    if (klatent) {  // k_bits 16 / k_group 32 stay: unused in the K latent mode
      s->k_maps = device_maps::upload((*o.k_maps)[static_cast<std::size_t>(l)], n_kv_,
                                      o.k_latent_rank, d_, device, "K", static_cast<int>(l));
      v.k_latent_rank = o.k_latent_rank;
      v.k_latent_bits = o.k_latent_bits;
      v.k_enc_w = s->k_maps.enc_w.data_ptr<float>();
      v.k_enc_b = s->k_maps.enc_b.data_ptr<float>();
      v.k_dec_w = s->k_maps.dec_w.data_ptr<float>();
      v.k_dec_b = s->k_maps.dec_b.data_ptr<float>();
    }
    v.k_rec = s->k_rec.data_ptr<std::uint8_t>();
    v.v_rec = s->v_rec.data_ptr<std::uint8_t>();
    v.k_slot_records = k_slot;
    v.v_slot_records = v_slot;
    v.k_win = reinterpret_cast<__half*>(s->k_win.data_ptr<at::Half>());
    v.v_win = reinterpret_cast<__half*>(s->v_win.data_ptr<at::Half>());
    v.win_cap = win_cap_;
    if (o.evicts()) {
      const auto i32 = at::TensorOptions().dtype(at::kInt).device(device);
      s->pos = at::zeros({slots, win_cap_}, i32);
      s->score = at::zeros({slots, win_cap_}, at::TensorOptions().dtype(at::kFloat).device(device));
      s->ectr = at::zeros({ev_rows * batch}, i32);
      v.keys_rotated = true;
    }
    layers_.push_back(std::move(s));
  }
  decode_attention_params p;
  p.kv = layers_[0]->view;
  p.n_heads = static_cast<int>(n_heads_);
  p.max_tokens = o.evicts() ? win_cap_ : static_cast<int>(capacity);
  workspace_ = at::empty({static_cast<std::int64_t>(decode_attention_workspace_size(p)) + 16}, u8);
  if (o.evicts()) {  // keys are stored after RoPE: no tables
    const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
    logits_ = at::empty({batch, n_heads_, win_cap_}, f32);
    row_stats_ = at::empty({batch, n_heads_, 2}, f32);
    return;
  }
  // RoPE rows of the CPU reference (the kernel rotates pre-RoPE keys at their positions).
  const rope_frequencies f =
      rope_inv_freq(cfg.rope, d, cfg.max_position_embeddings, std::max<std::int64_t>(capacity, 1));
  rope_scaling_ = f.attention_scaling;
  at::Tensor c = at::empty({capacity, d_ / 2}, at::kFloat), sn = at::empty_like(c);
  for (std::int64_t p = 0; p < capacity; ++p)
    rope_cos_sin(p, f.inv_freq.data(), d, f.attention_scaling, c.data_ptr<float>() + p * (d / 2),
                 sn.data_ptr<float>() + p * (d / 2));
  rope_cos_ = c.to(device);
  rope_sin_ = sn.to(device);
}

gpu_packed_cache::~gpu_packed_cache() = default;

void gpu_packed_cache::append(int layer, const kv_append& kv) {
  KVCAL_CHECK(layer >= 0 && layer < static_cast<int>(layers_.size()), "gpu_packed_cache: layer ",
              layer, " out of range");
  layer_state& s = *layers_[static_cast<std::size_t>(layer)];
  const at::Tensor& k = kv.k_pre;  // [B, n_kv, T, d]
  KVCAL_CHECK(
      k.dim() == 4 && k.size(0) == batch_ && k.size(1) == n_kv_ && k.size(3) == d_ && k.is_cuda(),
      "gpu_packed_cache: k_pre must be [", batch_, ", ", n_kv_, ", T, ", d_, "] on CUDA, got ",
      k.sizes());
  const std::int64_t T = k.size(2);
  KVCAL_CHECK(s.n + T <= capacity_, "gpu_packed_cache: capacity ", capacity_, " exceeded (", s.n,
              " + ", T, " tokens)");
  if (T > 1) {
    KVCAL_CHECK(s.n == 0, "gpu_packed_cache: several new tokens need an empty cache (a prompt); ",
                s.n, " tokens are held");
    s.prompt_k = kv.k_rope;
    s.prompt_v = kv.v;
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(k.device().index());
  const std::int64_t B = batch_;
  if (o_.evicts()) {
    if (T > 1) {  // a prompt: held as given until its attend selects the kept rows
      if (o_.learned) s.prompt_score = o_.learned->score(layer, kv);  // [B, n_kv, T]
      s.n = T;
      return;
    }
    // One token: keys after RoPE into the free row (the ring's n_tokens = that row); the device
    // step picks the row (rows kept so far) and gives it position n and score 0.
    KVCAL_CHECK(kv.k_rope.defined() && kv.k_rope.sizes() == k.sizes(),
                "gpu_packed_cache: H2O eviction stores keys after RoPE: k_rope must be given");
    at::Tensor k32 = kv.k_rope.transpose(1, 2).to(at::kFloat).contiguous();  // [B, 1, n_kv, d]
    at::Tensor v32 = kv.v.transpose(1, 2).to(at::kFloat).contiguous();
    KVCAL_ASSERT(s.held < win_cap_, "gpu_packed_cache: no free row (eviction out of step)");
    step_counters(layer);
    kv_window_append_params ap;
    ap.kv = s.view;
    ap.kv.n_tokens = s.ectr.data_ptr<int>() + ev_row * B;
    ap.k_new = k32.data_ptr<float>();
    ap.v_new = v32.data_ptr<float>();
    ap.t_new = 1;
    check_launch(launch_kv_window_append(ap, stream), "gpu_packed_cache: window append");
    if (o_.learned) {  // fixed at arrival, written into the row the device step picked
      at::Tensor row = s.ectr.narrow(0, ev_row * B, B).to(at::kLong).view({B, 1, 1});
      s.score.view({B, n_kv_, win_cap_})
          .scatter_(2, row.expand({B, n_kv_, 1}), o_.learned->score(layer, kv));  // [B, n_kv, 1]
    }
    ++s.held;
    ++s.n;
    return;
  }
  for (std::int64_t i = 0; i < T; i += o_.piece) {
    const std::int64_t t = std::min<std::int64_t>(o_.piece, T - i);
    // [B, t, n_kv, d] fp32: the kernels' token-major input.
    at::Tensor k32 = k.narrow(2, i, t).transpose(1, 2).to(at::kFloat).contiguous();
    at::Tensor v32 = kv.v.narrow(2, i, t).transpose(1, 2).to(at::kFloat).contiguous();
    int rows[kv_ctr_rows];  // the host mirror's next counters (kernels/cuda/kv_counters.h)
    kv_step_rows(rows, s.n, s.kc, s.vc, t, rule_);
    const std::int64_t n2 = rows[kv_n_new], k2 = rows[kv_k_to], v2 = rows[kv_v_to];
    if (T == 1) {
      step_counters(layer);  // the same rule on the device: no host value in the launches
    } else {                 // a prompt piece (eager): the host's counters, one copy
      std::int64_t vals[kv_ctr_rows];
      for (int r = 0; r < kv_ctr_rows; ++r) vals[r] = rows[r];
      put_counters(s.ctr, vals, kv_ctr_rows, B);
    }
    const int* ctr = s.ctr.data_ptr<int>();
    kv_window_append_params ap;
    ap.kv = s.view;
    ap.kv.n_tokens = ctr + kv_n_old * B;
    ap.k_new = k32.data_ptr<float>();
    ap.v_new = v32.data_ptr<float>();
    ap.t_new = static_cast<int>(t);
    check_launch(launch_kv_window_append(ap, stream), "gpu_packed_cache: window append");
    // A decode step always launches with the same bounds (one K block and one V token, or the
    // crossing of compress_after; the kernels skip empty ranges); a prompt piece with its own.
    // K latents: K "blocks" are single tokens (rule_.group 1), the same range as V's.
    const int step_k = kv_step_max_k_blocks(rule_), step_v = kv_step_max_v_tokens(rule_);
    KVCAL_ASSERT(T > 1 || (k2 - s.kc <= std::int64_t{step_k} * rule_.group && v2 - s.vc <= step_v),
                 "gpu_packed_cache: a step compresses more than its bounds (counters out of step)");
    const int max_k = T == 1 ? step_k : static_cast<int>((k2 - s.kc) / rule_.group);
    const int max_v = T == 1 ? step_v : static_cast<int>(v2 - s.vc);
    const bool latent = o_.v_latent(), klatent = o_.k_latent();
    // The kernel reads latent K and V over one range (kernels/cuda/packed_kv.h).
    KVCAL_ASSERT(!klatent || (k2 == v2 && s.kc == s.vc),
                 "gpu_packed_cache: K and V latent ranges differ (the rule's group must be 1)");
    // KIVI K records (and V records unless latent) in one launch.
    if (rule_.k_quant && !klatent && (T == 1 || k2 > s.kc || (!latent && v2 > s.vc))) {
      quant_compress_params cp;
      cp.kv = s.view;
      cp.kv.n_tokens = ctr + kv_n_new * B;
      cp.k_from = ctr + kv_k_from * B;
      cp.k_to = ctr + kv_k_to * B;
      cp.max_k_blocks = max_k;
      if (!latent) {
        cp.v_from = ctr + kv_v_from * B;
        cp.v_to = ctr + kv_v_to * B;
        cp.max_v_tokens = max_v;
      }
      check_launch(launch_quant_compress(cp, stream), "gpu_packed_cache: compress");
    }
    // V (and K) tokens leaving the window -> latent records, one launch for both streams.
    if (latent && (T == 1 || v2 > s.vc)) {
      latent_compress_params lp;
      lp.kv = s.view;
      lp.kv.n_tokens = ctr + kv_n_new * B;
      lp.v_from = ctr + kv_v_from * B;
      lp.v_to = ctr + kv_v_to * B;
      lp.max_v_tokens = max_v;
      if (klatent) {
        lp.k_from = ctr + kv_k_from * B;
        lp.k_to = ctr + kv_k_to * B;
        lp.max_k_tokens = max_k;
      }
      check_launch(launch_latent_compress(lp, stream), "gpu_packed_cache: latent compress");
    }
    s.n = n2;
    s.kc = k2;
    s.vc = v2;
  }
}

at::Tensor gpu_packed_cache::attend(int layer, const at::Tensor& q_rope,
                                    const at::Tensor& positions) {
  layer_state& s = *layers_.at(static_cast<std::size_t>(layer));
  KVCAL_CHECK(q_rope.dim() == 4 && q_rope.size(0) == batch_ && q_rope.size(1) == n_heads_ &&
                  q_rope.size(3) == d_,
              "gpu_packed_cache: q_rope must be [", batch_, ", ", n_heads_, ", T, ", d_, "], got ",
              q_rope.sizes());
  const std::int64_t T = q_rope.size(2);
  (void)positions;
  if (T > 1) {  // a prompt: exact causal attention over its own K/V
    KVCAL_CHECK(s.prompt_k.defined() && s.prompt_k.size(2) == T,
                "gpu_packed_cache: several queries only right after a prompt's append");
    at::Tensor out = o_.evicts() ? prompt_evict(layer, q_rope)
                                 : causal_attention(q_rope, s.prompt_k, s.prompt_v, 0, window_);
    s.prompt_k = at::Tensor();
    s.prompt_v = at::Tensor();
    return out;
  }
  s.prompt_k = at::Tensor();
  s.prompt_v = at::Tensor();
  KVCAL_CHECK(s.n >= 1, "gpu_packed_cache: attend before any append at layer ", layer);
  at::Tensor q32 = q_rope.select(2, 0).to(at::kFloat).contiguous();  // [B, n_heads, d]
  at::Tensor out = at::empty_like(q32);
  const int* ctr = s.ctr.data_ptr<int>();
  int* ectr = o_.evicts() ? s.ectr.data_ptr<int>() : nullptr;
  decode_attention_params p;
  p.kv = s.view;
  p.n_heads = static_cast<int>(n_heads_);
  p.q = q32.data_ptr<float>();
  if (o_.evicts()) {  // rows [0, held), keys after RoPE; H2O: the logits feed the scores
    p.kv.n_tokens = ectr + ev_held * batch_;
    p.max_tokens = win_cap_;
    if (o_.h2o) {
      p.logits = logits_.data_ptr<float>();
      p.row_stats = row_stats_.data_ptr<float>();
    }
  } else {
    p.kv.n_tokens = ctr + kv_n_new * batch_;
    p.kv.k_compressed = ctr + kv_kc_new * batch_;
    p.kv.v_compressed = ctr + kv_vc_new * batch_;
    p.rope_cos = rope_cos_.data_ptr<float>();
    p.rope_sin = rope_sin_.data_ptr<float>();
    p.rope_rows = static_cast<int>(capacity_);
    p.rope_attention_scaling = rope_scaling_;
    p.max_tokens = static_cast<int>(capacity_);
  }
  p.out = out.data_ptr<float>();
  // 16-byte aligned start inside the workspace tensor.
  auto base = reinterpret_cast<std::uintptr_t>(workspace_.data_ptr<std::uint8_t>());
  p.workspace = reinterpret_cast<void*>((base + 15) / 16 * 16);
  p.workspace_bytes = static_cast<std::size_t>(workspace_.numel()) - ((base + 15) / 16 * 16 - base);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(q_rope.device().index());
  check_launch(launch_decode_attention(p, stream), "gpu_packed_cache: decode attention");
  if (o_.h2o) {  // the CPU's order: this step's scores in, then evict (end of attend)
    h2o_accumulate_params a;
    a.batch = static_cast<int>(batch_);
    a.n_kv = static_cast<int>(n_kv_);
    a.n_heads = static_cast<int>(n_heads_);
    a.max_tokens = win_cap_;
    a.logits = p.logits;
    a.row_stats = p.row_stats;
    a.held = ectr + ev_held * batch_;
    a.score = s.score.data_ptr<float>();
    a.score_stride = win_cap_;
    check_launch(launch_h2o_accumulate(a, stream), "gpu_packed_cache: H2O scores");
  }
  if (o_.evicts()) {
    evict_one_params e;
    e.kv = s.view;
    e.pos = s.pos.data_ptr<int>();
    e.score = s.score.data_ptr<float>();
    e.held = ectr + ev_held * batch_;
    e.seen = ectr + ev_seen * batch_;
    e.maybe_held_out = ectr + ev_out * batch_;
    e.budget = budget_of(o_);
    check_launch(launch_evict_one(e, stream), "gpu_packed_cache: evict");
    s.held = std::min(s.held, evict_retained(e.budget, s.n));
  }
  return out.unsqueeze(2).to(q_rope.scalar_type());
}

// The prompt's attention output, its H2O scores (zeros for the window policy) and the R(T) kept
// rows, gathered into rows [0, R) of the ring. H2O: one flash-attention call gives the output
// and each query's log-sum-exp (model/attention_lse.h), then launch_h2o_prompt_scores sums the
// causal softmax's columns in one tensor-core pass (bf16 / fp16 q and k; an fp32 model's are
// rounded to bf16 for the scores only, its output stays fp32).
at::Tensor gpu_packed_cache::prompt_evict(int layer, const at::Tensor& q_rope) {
  layer_state& s = *layers_[static_cast<std::size_t>(layer)];
  const at::Tensor& kr = s.prompt_k;  // [B, n_kv, T, d] after RoPE
  const std::int64_t B = batch_, T = kr.size(2);
  // The constructor refuses windows shorter than the capacity: plain causal attention here.
  KVCAL_ASSERT(window_ <= 0 || window_ >= T, "gpu_packed_cache: sliding window below the prompt");
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(kr.device().index());
  // [B, n_kv, T]: every column written by the kernel (H2O), zeros for the window policy.
  const auto f32 = kr.options().dtype(at::kFloat);
  at::Tensor score = o_.h2o ? at::empty({B, n_kv_, T}, f32) : at::zeros({B, n_kv_, T}, f32);
  at::Tensor out;
  if (!o_.h2o) {  // window policy: by position only
    out = causal_attention(q_rope, kr, s.prompt_v, 0, window_);
  } else {
    const auto st = q_rope.scalar_type();
    const bool half = st == at::kBFloat16 || st == at::kHalf;
    const at::ScalarType kt = half ? st : at::kBFloat16;
    at::Tensor q16 = q_rope.to(kt), k16 = kr.to(kt);
    attention_lse a = causal_attention_lse(q16, k16, s.prompt_v.to(kt));
    out = half ? a.out : causal_attention(q_rope, kr, s.prompt_v, 0, window_);
    // The kernel reads channels contiguous, 16-byte aligned rows.
    auto ready = [](const at::Tensor& x) {
      const bool ok = x.stride(3) == 1 && x.stride(2) % 8 == 0 && x.stride(1) % 8 == 0 &&
                      x.stride(0) % 8 == 0 &&
                      reinterpret_cast<std::uintptr_t>(x.data_ptr()) % 16 == 0;
      return ok ? x : x.contiguous();
    };
    q16 = ready(q16);
    k16 = ready(k16);
    const h2o_prompt_params hp =
        h2o_prompt_params_of(q16, k16, a.lse, score, 1.0 / std::sqrt(static_cast<double>(d_)));
    check_launch(launch_h2o_prompt_scores(hp, stream), "gpu_packed_cache: H2O prompt scores");
  }
  if (o_.learned) score = s.prompt_score.contiguous();  // scored at append
  s.prompt_score = at::Tensor();
  const evict_budget bud = budget_of(o_);
  const std::int64_t R = evict_retained(bud, T);
  const std::int64_t vals[ev_rows] = {T, T, T, R};  // row, held, seen, out (kv_counters.h)
  put_counters(s.ectr, vals, ev_rows, B);
  at::Tensor kept = at::empty({B, n_kv_, R}, score.options().dtype(at::kInt));
  select_kept_params sp;
  sp.batch = static_cast<int>(B);
  sp.n_kv = static_cast<int>(n_kv_);
  sp.score = score.data_ptr<float>();
  sp.stride = static_cast<int>(T);
  sp.held = s.ectr.data_ptr<int>() + ev_held * B;
  sp.seen = s.ectr.data_ptr<int>() + ev_seen * B;
  sp.kept = kept.data_ptr<int>();
  sp.kept_stride = static_cast<int>(R);
  sp.budget = bud;
  check_launch(launch_select_kept(sp, stream), "gpu_packed_cache: prompt eviction");
  at::Tensor idx = kept.to(at::kLong);  // [B, n_kv, R]
  at::Tensor rows = idx.unsqueeze(-1).expand({B, n_kv_, R, d_});
  s.k_win.view({B, n_kv_, win_cap_, d_}).narrow(2, 0, R).copy_(kr.gather(2, rows));
  s.v_win.view({B, n_kv_, win_cap_, d_}).narrow(2, 0, R).copy_(s.prompt_v.gather(2, rows));
  s.pos.view({B, n_kv_, win_cap_}).narrow(2, 0, R).copy_(kept);
  s.score.view({B, n_kv_, win_cap_}).narrow(2, 0, R).copy_(score.gather(2, idx));
  s.held = R;
  return out;
}

std::int64_t gpu_packed_cache::length() const {
  return layers_.empty() ? 0 : layers_.back()->n;
}

void gpu_packed_cache::reset() {
  for (auto& s : layers_) {
    s->n = s->kc = s->vc = s->held = 0;
    s->prompt_k = at::Tensor();
    s->prompt_v = at::Tensor();
    // Decode steps advance the device counters from their last values: start them at zero (in
    // place, so a captured graph keeps its pointers).
    s->ctr.zero_();
    if (s->ectr.defined()) s->ectr.zero_();
    s->prompt_score = at::Tensor();
  }
}

// A decode step's counters, advanced on the device from the previous step's.
void gpu_packed_cache::step_counters(int layer) {
  layer_state& s = *layers_[static_cast<std::size_t>(layer)];
  kv_step_params p;
  p.batch = static_cast<int>(batch_);
  p.t_new = 1;
  if (o_.evicts()) {
    p.ectr = s.ectr.data_ptr<int>();
    p.n_kv = static_cast<int>(n_kv_);
    p.rows = win_cap_;
    p.pos = s.pos.data_ptr<int>();
    p.score = s.score.data_ptr<float>();
  } else {
    p.ctr = s.ctr.data_ptr<int>();
    p.residual = o_.residual;
    p.group = rule_.group;  // 1 in the K latent mode
    p.quant = rule_.v_quant;
    p.k_fp16 = !rule_.k_quant;
    p.compress_after = static_cast<int>(rule_.compress_after);
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(s.ctr.device().index());
  check_launch(launch_kv_step(p, stream), "gpu_packed_cache: counter step");
}

// After graph replays: the host mirror of n held tokens. Every step keeps R(seen) rows under
// eviction (R grows by at most one a token, so min(R(n - 1) + 1, R(n)) = R(n)).
void gpu_packed_cache::set_host_length(std::int64_t n) {
  KVCAL_CHECK(n >= 0 && n <= capacity_, "gpu_packed_cache: length ", n, " outside [0, ", capacity_,
              "]");
  for (auto& s : layers_) {
    s->n = n;
    s->kc = kv_k_compressed(n, rule_);
    s->vc = kv_v_compressed(n, rule_);
    s->held = o_.evicts() ? evict_retained(budget_of(o_), n) : 0;
    s->prompt_k = at::Tensor();
    s->prompt_v = at::Tensor();
  }
}

std::vector<int> gpu_packed_cache::device_counters(int layer) const {
  const layer_state& s = *layers_.at(static_cast<std::size_t>(layer));
  at::Tensor c = s.ectr.defined() ? at::cat({s.ctr, s.ectr}) : s.ctr;
  c = c.to(at::kCPU).contiguous();
  return std::vector<int>(c.data_ptr<int>(), c.data_ptr<int>() + c.numel());
}

std::size_t gpu_packed_cache::bytes_allocated() const {
  std::size_t n = 0;
  for (const auto& s : layers_)
    n += static_cast<std::size_t>(s->k_rec.nbytes() + s->v_rec.nbytes() + s->k_win.nbytes() +
                                  s->v_win.nbytes()) +
         (o_.evicts() ? static_cast<std::size_t>(s->pos.nbytes() + s->score.nbytes()) : 0);
  if (o_.evicts()) n += static_cast<std::size_t>(logits_.nbytes() + row_stats_.nbytes());
  return n + fixed_bytes();
}

std::size_t gpu_packed_cache::fixed_bytes() const {
  std::size_t n = 0;
  for (const auto& s : layers_) n += s->v_maps.bytes() + s->k_maps.bytes();
  return n;
}

std::size_t gpu_packed_cache::bytes_used() const {
  std::size_t n = 0;
  const int d = static_cast<int>(d_);
  for (const auto& s : layers_) {
    const std::size_t slots = static_cast<std::size_t>(batch_ * n_kv_);
    if (o_.evicts()) {  // K, V fp16 rows + int32 position + fp32 score per held token
      n += slots * static_cast<std::size_t>(s->held) * (static_cast<std::size_t>(d) * 2 * 2 + 8);
      continue;
    }
    // K records of kc tokens (KIVI blocks of `group`, or latents: one per token), V records of vc
    // tokens (latent or quantized), fp16 rows of the rest (kc = 0 for fp16 keys, vc = 0 for an
    // fp16 cache).
    const std::size_t k_rb = o_.k_latent()
                                 ? latent_record_bytes_of(o_.k_latent_rank, o_.k_latent_bits)
                             : rule_.k_quant ? k_record_bytes(d, o_.bits, o_.group)
                                             : 0;
    const std::size_t v_rb = o_.v_latent()
                                 ? latent_record_bytes_of(o_.v_latent_rank, o_.v_latent_bits)
                             : rule_.v_quant ? v_record_bytes(d, o_.bits, o_.group)
                                             : 0;
    n += slots *
         (static_cast<std::size_t>(s->kc / rule_.group) * k_rb +
          static_cast<std::size_t>(s->vc) * v_rb +
          static_cast<std::size_t>(s->n - s->kc + s->n - s->vc) * static_cast<std::size_t>(d) * 2);
  }
  return n;
}

std::int64_t gpu_packed_cache::held(int layer) const {
  const layer_state& s = *layers_.at(static_cast<std::size_t>(layer));
  return o_.evicts() ? s.held : s.n;
}

std::pair<at::Tensor, at::Tensor> gpu_packed_cache::held_rows(int layer) const {
  const layer_state& s = *layers_.at(static_cast<std::size_t>(layer));
  KVCAL_CHECK(o_.evicts(), "gpu_packed_cache: held_rows needs an evicting cache");
  return {s.pos.view({batch_, n_kv_, win_cap_}).narrow(2, 0, s.held),
          s.score.view({batch_, n_kv_, win_cap_}).narrow(2, 0, s.held)};
}

#endif

}  // namespace kvcal
