// The CUDA half of bench/decode_bench.h: fills a packed cache with the append kernels (random
// pre-RoPE keys with an outlier channel, random values) and times decode attention over it.
// "bytes read" counts what the kernels load: packed records + fp16 windows of every (sequence,
// KV head), the queries, the RoPE table rows (one per 32 tokens, shared by the heads) and the
// split partials written and read back; in the V latent mode also the latent records (with their
// scale / zero) and dec_w / dec_b once per KV head (the CTAs re-read them from L2); in the K
// latent mode the same for K (latent K records, K dec_w / dec_b). Latent cases use a random
// orthonormal basis and mean (synthetic; no calibration in the bench).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "bench/decode_bench.h"
#include "bench/random_basis.h"
#include "kernels/common/error.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/latent_append.h"
#include "kernels/cuda/quant_append.h"
#include "runtime/kv_codec.h"

namespace kvcal {
namespace {

#define CUDA_OK(x)                                                                                \
  do {                                                                                            \
    cudaError_t e_ = (x);                                                                         \
    KVCAL_CHECK(e_ == cudaSuccess, "decode bench: CUDA error ", cudaGetErrorString(e_), " (", #x, \
                ") ", last_launch_error());                                                       \
  } while (0)

// x[i] = uniform-ish in [-1, 1] (+ an outlier offset on channel 3 for keys), from a hash.
__global__ void fill_random_kernel(float* x, std::int64_t n, int d, std::uint32_t seed,
                                   float outlier) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u ^ seed;
  h ^= h >> 16;
  h *= 0x7feb352du;
  h ^= h >> 15;
  h *= 0x846ca68bu;
  h ^= h >> 16;
  float v = static_cast<float>(h & 0xffffffu) / 8388608.0f - 1.0f;
  if (i % d == 3) v = v * outlier + outlier;
  x[i] = v;
}

template <typename T>
T* dalloc(std::size_t n) {
  T* p = nullptr;
  CUDA_OK(cudaMalloc(&p, std::max<std::size_t>(n, 1) * sizeof(T)));
  CUDA_OK(cudaMemset(p, 0, std::max<std::size_t>(n, 1) * sizeof(T)));
  return p;
}

// Synthetic PCA maps of n_kv heads (random orthonormal basis rows by Gram-Schmidt, small random
// mean), concatenated: enc_w [n_kv, r, d], enc_b [n_kv, r], dec_w [n_kv, d, r], dec_b [n_kv, d].
linear_maps synthetic_pca(int n_kv, int r, int d, unsigned seed = 1234) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  linear_maps all;
  all.rank = r;
  all.d = d;
  const std::size_t D = static_cast<std::size_t>(d);
  for (int g = 0; g < n_kv; ++g) {
    const std::vector<float> basis = random_orthonormal_rows(rng, nd, r, d);
    std::vector<float> mean(D);
    for (auto& x : mean) x = 0.1f * nd(rng);
    const linear_maps m = pca_maps(basis.data(), mean.data(), r, d);
    all.enc_w.insert(all.enc_w.end(), m.enc_w.begin(), m.enc_w.end());
    all.enc_b.insert(all.enc_b.end(), m.enc_b.begin(), m.enc_b.end());
    all.dec_w.insert(all.dec_w.end(), m.dec_w.begin(), m.dec_w.end());
    all.dec_b.insert(all.dec_b.end(), m.dec_b.begin(), m.dec_b.end());
  }
  return all;
}

float* upload(const std::vector<float>& h) {
  float* p = dalloc<float>(h.size());
  CUDA_OK(cudaMemcpy(p, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
  return p;
}

// One stream's synthetic maps (synthetic_pca of rank r) on the device, pointed at by the view's
// fields of that stream; free() at the end of the case.
struct device_maps {
  float *enc_w = nullptr, *enc_b = nullptr, *dec_w = nullptr, *dec_b = nullptr;
  void upload_to(int n_kv, int r, int d, unsigned seed, const float** ew, const float** eb,
                 const float** dw, const float** db) {
    const linear_maps maps = synthetic_pca(n_kv, r, d, seed);
    *ew = enc_w = upload(maps.enc_w);
    *eb = enc_b = upload(maps.enc_b);
    *dw = dec_w = upload(maps.dec_w);
    *db = dec_b = upload(maps.dec_b);
  }
  void free() {
    cudaFree(enc_w);
    cudaFree(enc_b);
    cudaFree(dec_w);
    cudaFree(dec_b);
  }
};

}  // namespace

decode_timing time_decode_case(const decode_case& m, const decode_shape& s) {
  KVCAL_CHECK(m.unsupported.empty(), m.name, ": ", m.unsupported);
  const int B = s.batch, L = s.len, n_heads = s.n_heads, n_kv = s.n_kv, reps = s.reps;
  const int d = s.head_dim;
  const std::size_t flush_bytes = 128u << 20;  // > L2 (50-60 MB on H100/H200)
  float* flush = dalloc<float>(flush_bytes / 4);
  const std::size_t D = static_cast<std::size_t>(d);
  const bool latent = m.v_latent;
  KVCAL_CHECK(!latent || m.v_latent_rank > 0, m.name, ": V latent case without a rank");
  const bool klat = m.k_latent;  // K latent records (with the V latent mode)
  KVCAL_CHECK(!klat || (latent && m.k_latent_rank > 0 && m.k_latent_rank == m.v_latent_rank),
              m.name, ": the K latent mode needs the V latent mode of the same rank");
  const bool kfp16 = m.bits == 16 && !klat;  // every key in the ring
  const bool fp16 = kfp16 && !latent;        // the fp16 baseline: nothing compressed
  const int chunk = std::min(L, 4096);
  const int cap = kfp16 ? L : chunk + std::max(256, m.residual + m.group);
  const std::int64_t kslot = klat ? L : kfp16 ? 0 : L / m.group + 1, vslot = fp16 ? 0 : L;
  const std::size_t krb = klat    ? latent_record_bytes_of(m.k_latent_rank, m.k_latent_bits)
                          : kfp16 ? 0
                                  : k_record_bytes(d, m.bits, m.group);
  const int v_bits = m.v_bits > 0 ? m.v_bits : m.bits;  // mixed widths: V's own
  const std::size_t vrb = latent ? latent_record_bytes_of(m.v_latent_rank, m.v_latent_bits)
                          : fp16 ? 0
                                 : v_record_bytes(d, v_bits, m.group);
  const std::size_t slots = static_cast<std::size_t>(B * n_kv);
  packed_kv_view kv;
  kv.batch = B;
  kv.n_kv = n_kv;
  kv.head_dim = d;
  kv.k_bits = klat ? 16 : m.bits;
  kv.v_bits = latent ? 16 : v_bits;
  kv.k_group = kfp16 || klat ? 32 : m.group;
  kv.v_group = fp16 || latent ? 32 : m.group;
  device_maps v_maps, k_maps;
  if (latent) {
    v_maps.upload_to(n_kv, m.v_latent_rank, d, 1234, &kv.v_enc_w, &kv.v_enc_b, &kv.v_dec_w,
                     &kv.v_dec_b);
    kv.v_latent_rank = m.v_latent_rank;
    kv.v_latent_bits = m.v_latent_bits;
  }
  if (klat) {
    k_maps.upload_to(n_kv, m.k_latent_rank, d, 4321, &kv.k_enc_w, &kv.k_enc_b, &kv.k_dec_w,
                     &kv.k_dec_b);
    kv.k_latent_rank = m.k_latent_rank;
    kv.k_latent_bits = m.k_latent_bits;
  }
  kv.k_rec = dalloc<std::uint8_t>(slots * static_cast<std::size_t>(kslot) * krb);
  kv.v_rec = dalloc<std::uint8_t>(slots * static_cast<std::size_t>(vslot) * vrb);
  kv.k_slot_records = kslot;
  kv.v_slot_records = vslot;
  kv.k_win = dalloc<__half>(slots * static_cast<std::size_t>(cap) * D);
  kv.v_win = dalloc<__half>(slots * static_cast<std::size_t>(cap) * D);
  kv.win_cap = cap;
  int* n_tok = dalloc<int>(static_cast<std::size_t>(B));
  int* kc = dalloc<int>(static_cast<std::size_t>(B));
  int* vc = dalloc<int>(static_cast<std::size_t>(B));
  int* kto = dalloc<int>(static_cast<std::size_t>(B));
  int* vto = dalloc<int>(static_cast<std::size_t>(B));
  kv.n_tokens = n_tok;
  kv.k_compressed = kc;
  kv.v_compressed = vc;

  // Fill: append chunks of random tokens, compress what leaves the residual window.
  const std::size_t chunk_elems = static_cast<std::size_t>(B) * chunk * n_kv * D;
  float* kn = dalloc<float>(chunk_elems);
  float* vn = dalloc<float>(chunk_elems);
  auto set = [&](int* p, int v) {
    std::vector<int> h(static_cast<std::size_t>(B), v);
    CUDA_OK(cudaMemcpy(p, h.data(), h.size() * sizeof(int), cudaMemcpyHostToDevice));
  };
  cudaEvent_t a0, a1;
  CUDA_OK(cudaEventCreate(&a0));
  CUDA_OK(cudaEventCreate(&a1));
  float append_ms = 0.0f;
  int n = 0, k_done = 0, v_done = 0;
  while (n < L) {
    const int t_new = std::min(chunk, L - n);
    const std::int64_t elems = static_cast<std::int64_t>(B) * t_new * n_kv * d;
    const int threads = 256;
    const unsigned blocks = static_cast<unsigned>((elems + threads - 1) / threads);
    fill_random_kernel<<<blocks, threads>>>(kn, elems, d, 0x1234u + static_cast<unsigned>(n), 4.0f);
    fill_random_kernel<<<blocks, threads>>>(vn, elems, d, 0x9876u + static_cast<unsigned>(n), 1.0f);
    CUDA_OK(cudaGetLastError());
    set(n_tok, n);
    set(kc, k_done);
    set(vc, v_done);
    const int n2 = n + t_new;
    const bool dormant = m.compress_after >= 0 && n2 <= m.compress_after;  // adaptive presets
    const int k2 = kfp16 || dormant ? 0
                   : klat           ? std::max(0, n2 - m.residual)  // per token, = v2
                                    : std::max(0, n2 - m.residual) / m.group * m.group;
    const int v2 = fp16 || dormant ? 0 : std::max(0, n2 - m.residual);
    set(kto, k2);
    set(vto, v2);
    CUDA_OK(cudaEventRecord(a0));
    kv_window_append_params ap;
    ap.kv = kv;
    ap.k_new = kn;
    ap.v_new = vn;
    ap.t_new = t_new;
    CUDA_OK(launch_kv_window_append(ap, nullptr));
    if (!kfp16 && !klat) {
      quant_compress_params cp;
      cp.kv = kv;
      cp.k_from = kc;
      cp.k_to = kto;
      cp.max_k_blocks = (k2 - k_done) / m.group;
      if (!latent) {
        cp.v_from = vc;
        cp.v_to = vto;
        cp.max_v_tokens = v2 - v_done;
      }
      CUDA_OK(launch_quant_compress(cp, nullptr));
    }
    if (latent) {
      latent_compress_params lp;
      lp.kv = kv;
      lp.v_from = vc;
      lp.v_to = vto;
      lp.max_v_tokens = v2 - v_done;
      if (klat) {
        lp.k_from = kc;
        lp.k_to = kto;
        lp.max_k_tokens = k2 - k_done;
      }
      CUDA_OK(launch_latent_compress(lp, nullptr));
    }
    CUDA_OK(cudaEventRecord(a1));
    CUDA_OK(cudaEventSynchronize(a1));
    float ms = 0.0f;
    CUDA_OK(cudaEventElapsedTime(&ms, a0, a1));
    append_ms += ms;
    n = n2;
    k_done = k2;
    v_done = v2;
  }
  set(n_tok, L);
  set(kc, k_done);
  set(vc, v_done);

  // RoPE tables (Qwen2.5: theta 1e6) and queries.
  std::vector<float> inv_freq(D / 2), cosv(static_cast<std::size_t>(L) * D / 2), sinv(cosv.size());
  for (int i = 0; i < d / 2; ++i)
    inv_freq[static_cast<std::size_t>(i)] =
        1.0f / std::pow(1000000.0f, static_cast<float>(2 * i) / static_cast<float>(d));
  for (int p = 0; p < L; ++p)
    rope_cos_sin(p, inv_freq.data(), d, 1.0f, &cosv[static_cast<std::size_t>(p) * D / 2],
                 &sinv[static_cast<std::size_t>(p) * D / 2]);
  float* dcos = dalloc<float>(cosv.size());
  float* dsin = dalloc<float>(sinv.size());
  CUDA_OK(cudaMemcpy(dcos, cosv.data(), cosv.size() * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dsin, sinv.data(), sinv.size() * 4, cudaMemcpyHostToDevice));
  const std::size_t q_elems = static_cast<std::size_t>(B * n_heads) * D;
  float* q = dalloc<float>(q_elems);
  fill_random_kernel<<<static_cast<unsigned>((q_elems + 255) / 256), 256>>>(
      q, static_cast<std::int64_t>(q_elems), d, 0x5555u, 1.0f);
  float* out = dalloc<float>(q_elems);

  decode_attention_params p;
  p.kv = kv;
  p.n_heads = n_heads;
  p.q = q;
  p.rope_cos = dcos;
  p.rope_sin = dsin;
  p.rope_rows = L;
  p.max_tokens = L;
  p.out = out;
  p.half_dequant = m.half_dequant;
  p.pipelined = m.pipelined;
  p.register_direct = m.register_direct;
  const std::size_t ws = decode_attention_workspace_size(p);
  p.workspace = dalloc<std::uint8_t>(ws);
  p.workspace_bytes = ws;

  std::vector<float> times;
  cudaEvent_t e0, e1;
  CUDA_OK(cudaEventCreate(&e0));
  CUDA_OK(cudaEventCreate(&e1));
  for (int i = 0; i < reps + 5; ++i) {
    CUDA_OK(cudaMemsetAsync(flush, i & 0xff, flush_bytes));
    CUDA_OK(cudaEventRecord(e0));
    CUDA_OK(launch_decode_attention(p, nullptr));
    CUDA_OK(cudaEventRecord(e1));
    CUDA_OK(cudaEventSynchronize(e1));
    float ms = 0.0f;
    CUDA_OK(cudaEventElapsedTime(&ms, e0, e1));
    if (i >= 5) times.push_back(ms);
  }
  std::sort(times.begin(), times.end());
  // Sanity: outputs finite.
  std::vector<float> h(q_elems);
  CUDA_OK(cudaMemcpy(h.data(), out, q_elems * 4, cudaMemcpyDeviceToHost));
  for (float x : h)
    if (!std::isfinite(x)) {
      KVCAL_FAIL(m.name, " B", B, " L", L, ": non-finite attention output");
    }

  decode_timing r;
  r.us = 1000.0 * times[times.size() / 2];
  const double k_recs = klat ? static_cast<double>(k_done) : static_cast<double>(k_done / m.group);
  const double k_bytes =
      kfp16 ? 2.0 * L * d
            : k_recs * static_cast<double>(krb) + static_cast<double>(L - k_done) * d * 2;
  const double v_bytes = static_cast<double>(v_done) * static_cast<double>(vrb) +
                         static_cast<double>(L - v_done) * d * 2;
  const double per_slot = k_bytes + v_bytes;
  const double maps_bytes =
      (latent ? static_cast<double>(n_kv) * (static_cast<double>(d) * m.v_latent_rank + d) * 4
              : 0.0) +
      (klat ? static_cast<double>(n_kv) * (static_cast<double>(d) * m.k_latent_rank + d) * 4 : 0.0);
  const double parts = static_cast<double>(ws) / 4.0 / (d + 2);  // rows of (m, l, acc)
  r.bytes = per_slot * static_cast<double>(slots) + maps_bytes +
            static_cast<double>(q_elems) * 4 * 2 + static_cast<double>((L + 31) / 32 + 32) * d * 4 +
            parts * (d + 2) * 4 * 2;
  r.fp16_bytes = 2.0 * L * d * 2 * static_cast<double>(slots);
  r.append_tok_s = append_ms > 0 ? static_cast<double>(L) * B / (append_ms / 1000.0) : 0.0;

  cudaFree(kv.k_rec);
  cudaFree(kv.v_rec);
  cudaFree(kv.k_win);
  cudaFree(kv.v_win);
  cudaFree(n_tok);
  cudaFree(kc);
  cudaFree(vc);
  cudaFree(kto);
  cudaFree(vto);
  cudaFree(kn);
  cudaFree(vn);
  cudaFree(dcos);
  cudaFree(dsin);
  cudaFree(q);
  cudaFree(out);
  cudaFree(p.workspace);
  v_maps.free();
  k_maps.free();
  cudaFree(flush);
  cudaEventDestroy(a0);
  cudaEventDestroy(a1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return r;
}

}  // namespace kvcal
