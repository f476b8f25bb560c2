// bench_decode: decode attention per layer over the packed KIVI cache (kernels/cuda/) at
// Qwen2.5-7B shapes (28 query / 4 KV heads, head_dim 128), against our own fp16 kernel in the
// same run; bench/sdpa_baseline.py prints torch SDPA FP16 at the same shapes in the same format.
//
//   bench_decode [--reps 50] [--batch 1,8] [--len 4096,32768] [--heads 28] [--kv 4]
//
// Methods: fp16 (ours: K/V fp16, RoPE applied to keys in the kernel), kivi-2 and kivi-4
// (presets/templates: K per-channel, V per-token, group 32, asymmetric, fp16 residual 128), each
// also with half_dequant (dequantization and rotation in fp16 arithmetic).
// The cache is filled on the GPU by the append kernels (random pre-RoPE keys and values), which
// also gives append + compress throughput. Each timed launch follows an L2 flush (a 128 MiB
// memset outside the timed region); time = median of --reps cudaEvent-timed launches (attention
// kernel + merge kernel). "bytes read" counts what the kernels load from memory: packed records
// + fp16 windows of every (sequence, KV head), the queries, the RoPE table rows (one per 32
// tokens, once: they are shared by the heads) and the split partials written and read back.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cpu/rope.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/quant_append.h"

using namespace kvcal;

namespace {

#define CUDA_OK(x)                                                                           \
  do {                                                                                       \
    cudaError_t e_ = (x);                                                                    \
    if (e_ != cudaSuccess) {                                                                 \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, \
                   __LINE__, last_launch_error().c_str());                                   \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

std::vector<int> parse_list(const char* s) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(std::atoi(item.c_str()));
  return v;
}

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

struct method {
  const char* name;
  int bits;  // 16 = fp16
  int group;
  int residual;
  bool half_dequant;  // decode_attention_params::half_dequant
};

struct result {
  double us = 0, bytes = 0, fp16_bytes = 0, append_tok_s = 0;
};

result run_case(const method& m, int B, int L, int n_heads, int n_kv, int reps, float* flush,
                std::size_t flush_bytes) {
  const int d = 128;
  const std::size_t D = static_cast<std::size_t>(d);
  const bool fp16 = m.bits == 16;
  const int chunk = std::min(L, 4096);
  const int cap = fp16 ? L : chunk + 256;
  const std::int64_t kslot = fp16 ? 0 : L / m.group + 1, vslot = fp16 ? 0 : L;
  const std::size_t krb = fp16 ? 0 : k_record_bytes(d, m.bits, m.group);
  const std::size_t vrb = fp16 ? 0 : v_record_bytes(d, m.bits, m.group);
  const std::size_t slots = static_cast<std::size_t>(B * n_kv);
  packed_kv_view kv;
  kv.batch = B;
  kv.n_kv = n_kv;
  kv.head_dim = d;
  kv.k_bits = kv.v_bits = m.bits;
  kv.k_group = kv.v_group = fp16 ? 32 : m.group;
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
    const int k2 = fp16 ? 0 : std::max(0, n2 - m.residual) / m.group * m.group;
    const int v2 = fp16 ? 0 : std::max(0, n2 - m.residual);
    set(kto, k2);
    set(vto, v2);
    CUDA_OK(cudaEventRecord(a0));
    kv_window_append_params ap;
    ap.kv = kv;
    ap.k_new = kn;
    ap.v_new = vn;
    ap.t_new = t_new;
    CUDA_OK(launch_kv_window_append(ap, nullptr));
    if (!fp16) {
      quant_compress_params cp;
      cp.kv = kv;
      cp.k_from = kc;
      cp.k_to = kto;
      cp.v_from = vc;
      cp.v_to = vto;
      cp.max_k_blocks = (k2 - k_done) / m.group;
      cp.max_v_tokens = v2 - v_done;
      CUDA_OK(launch_quant_compress(cp, nullptr));
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
      std::fprintf(stderr, "%s B%d L%d: non-finite output\n", m.name, B, L);
      std::exit(1);
    }

  result r;
  r.us = 1000.0 * times[times.size() / 2];
  const double per_slot = fp16 ? 2.0 * L * d * 2
                               : static_cast<double>(k_done / m.group) * static_cast<double>(krb) +
                                     static_cast<double>(v_done) * static_cast<double>(vrb) +
                                     static_cast<double>(L - k_done) * d * 2 +
                                     static_cast<double>(L - v_done) * d * 2;
  const double parts = static_cast<double>(ws) / 4.0 / (d + 2);  // rows of (m, l, acc)
  r.bytes = per_slot * static_cast<double>(slots) + static_cast<double>(q_elems) * 4 * 2 +
            static_cast<double>((L + 31) / 32 + 32) * d * 4 + parts * (d + 2) * 4 * 2;
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
  cudaEventDestroy(a0);
  cudaEventDestroy(a1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 50, n_heads = 28, n_kv = 4;
  std::vector<int> batches{1, 8}, lens{4096, 32768};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--reps")
      reps = std::atoi(argv[i + 1]);
    else if (a == "--batch")
      batches = parse_list(argv[i + 1]);
    else if (a == "--len")
      lens = parse_list(argv[i + 1]);
    else if (a == "--heads")
      n_heads = std::atoi(argv[i + 1]);
    else if (a == "--kv")
      n_kv = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "bench_decode: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  int dev_count = 0;
  if (cudaGetDeviceCount(&dev_count) != cudaSuccess || dev_count == 0) {
    std::fprintf(stderr, "bench_decode: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  const std::size_t flush_bytes = 128u << 20;
  float* flush = dalloc<float>(flush_bytes / 4);
  const method methods[] = {{"fp16 (ours)", 16, 32, 0, false},
                            {"kivi-4", 4, 32, 128, false},
                            {"kivi-2", 2, 32, 128, false},
                            {"fp16 (ours, half_dequant)", 16, 32, 0, true},
                            {"kivi-4 (half_dequant)", 4, 32, 128, true},
                            {"kivi-2 (half_dequant)", 2, 32, 128, true}};
  std::printf(
      "decode attention per layer, %s, %d q / %d kv heads, d 128, median of %d, L2 flushed\n\n",
      prop.name, n_heads, n_kv, reps);
  std::printf(
      "| method | B | L | time (us) | MB read | TB/s | fp16 MB / MB read | speedup vs fp16 (ours) "
      "| append+compress (Mtok/s) |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (int B : batches)
    for (int L : lens) {
      double base_us = 0;
      for (const method& m : methods) {
        const result r = run_case(m, B, L, n_heads, n_kv, reps, flush, flush_bytes);
        if (m.bits == 16 && !m.half_dequant) base_us = r.us;
        std::printf("| %s | %d | %d | %.1f | %.1f | %.2f | %.2f | %.2f | %.1f |\n", m.name, B, L,
                    r.us, r.bytes / 1e6, r.bytes / (r.us * 1e-6) / 1e12, r.fp16_bytes / r.bytes,
                    base_us / r.us, r.append_tok_s / 1e6);
        std::fflush(stdout);
      }
    }
  cudaFree(flush);
  return 0;
}
