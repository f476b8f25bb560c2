#include <string>

#include "kernels/cuda/latent_append.h"
#include "kernels/cuda/quant_rounding.cuh"

namespace kvcal {

namespace {

using namespace quant_dev;

constexpr int kTokens = 8;  // tokens per block: each enc_w element loaded once for all of them

// One stream (K or V) of the view in the latent mode: the same kernel encodes either.
struct latent_stream {
  const __half* win = nullptr;  // [B, n_kv, win_cap, d]
  std::uint8_t* rec = nullptr;  // [B, n_kv, slot_records, latent_record_bytes(rank, bits)]
  std::int64_t slot_records = 0;
  const float* enc_w = nullptr;  // [n_kv, rank, d]
  const float* enc_b = nullptr;  // [n_kv, rank]
  int rank = 0, bits = 16;
  const int* from = nullptr;  // [B]
  const int* to = nullptr;    // [B]
};

// kTokens latent records of one stream: grid (ceil(max tokens / kTokens), n_kv, B), block d (thread
// c loads channel c of each token; thread i < r computes z_i of every token, one enc_w load per
// channel for all of them, each sum in the host's order without FMA; thread j < kTokens quantizes
// token j's group).
__global__ void latent_compress_kernel(latent_stream s, int n_kv, int d, int win_cap) {
  __shared__ float xs[kTokens][128];
  __shared__ float zs[kTokens][128];
  __shared__ unsigned char codes[kTokens][128];
  __shared__ group_q grp[kTokens];
  const int g = blockIdx.y, b = blockIdx.z, c = threadIdx.x;
  const int r = s.rank, bits = s.bits;
  const int t0 = s.from[b] + static_cast<int>(blockIdx.x) * kTokens;
  const int nt = min(kTokens, s.to[b] - t0);
  if (nt <= 0) return;
  const std::int64_t slot = static_cast<std::int64_t>(b) * n_kv + g;
  for (int j = 0; j < kTokens; ++j)
    xs[j][c] = j < nt ? __half2float(s.win[(slot * win_cap + (t0 + j) % win_cap) * d + c]) : 0.0f;
  __syncthreads();
  if (c < r) {
    const float* w = s.enc_w + (static_cast<std::int64_t>(g) * r + c) * d;
    const float bias = s.enc_b[static_cast<std::int64_t>(g) * r + c];
    float acc[kTokens];
#pragma unroll
    for (int j = 0; j < kTokens; ++j) acc[j] = bias;
    for (int i = 0; i < d; ++i) {
      const float wi = __ldg(w + i);
#pragma unroll
      for (int j = 0; j < kTokens; ++j) acc[j] = __fadd_rn(acc[j], __fmul_rn(wi, xs[j][i]));
    }
#pragma unroll
    for (int j = 0; j < kTokens; ++j) zs[j][c] = acc[j];
  }
  __syncthreads();
  const std::int64_t rec_bytes = static_cast<std::int64_t>(latent_record_bytes_of(r, bits));
  std::uint8_t* rec0 = s.rec + (slot * s.slot_records + t0) * rec_bytes;
  if (bits == 16) {
    // One 16-bit store per latent (records of 2r bytes, 2-aligned). The byte-wise store_u16
    // here left every low byte 0 on the H200 (test_kernels_gpu, latent append, bits 16).
    if (c < r)
      for (int j = 0; j < nt; ++j)
        *reinterpret_cast<unsigned short*>(rec0 + j * rec_bytes + 2 * c) = f2h_bits(zs[j][c]);
    return;
  }
  if (c < nt) {
    float mn = zs[c][0], mx = zs[c][0];
    for (int i = 1; i < r; ++i) {
      mn = fminf(mn, zs[c][i]);
      mx = fmaxf(mx, zs[c][i]);
    }
    grp[c] = make_group(mn, mx, bits);
    store_u16(rec0 + c * rec_bytes, grp[c].scale);
    store_u16(rec0 + c * rec_bytes + 2, grp[c].zero);
  }
  __syncthreads();
  if (c < r)
    for (int j = 0; j < nt; ++j) codes[j][c] = quant_code(zs[j][c], grp[j], bits);
  __syncthreads();
  for (int j = 0; j < nt; ++j) pack_codes(codes[j], r, bits, rec0 + j * rec_bytes + 4);
}

cudaError_t invalid(std::string msg) {
  set_launch_error("latent_compress: " + std::move(msg));
  return cudaErrorInvalidValue;
}

// The checks of one stream ("K" / "V"); empty when it is fine.
std::string check_stream(const char* name, int d, int r, int bits, const void* rec, const void* win,
                         const void* enc_w, const void* enc_b, const void* to) {
  const std::string n = name;
  if (r <= 0 || r % 16 != 0 || r > d)
    return n + " latent rank " + std::to_string(r) +
           " is not a positive multiple of 16 <= head_dim " + std::to_string(d);
  if (bits != 16 && bits != 8 && bits != 4)
    return n + " latent bits " + std::to_string(bits) + " is not one of 16, 8, 4";
  if (!rec || !win || !enc_w || !enc_b || !to)
    return n + " records, window, enc_w / enc_b or " + (n == "K" ? "k_to" : "v_to") + " missing";
  return {};
}

}  // namespace

cudaError_t launch_latent_compress(const latent_compress_params& p, cudaStream_t stream) {
  const packed_kv_view& kv = p.kv;
  const int d = kv.head_dim;
  if (d != 64 && d != 128) return invalid("head_dim " + std::to_string(d) + " is not 64 or 128");
  const bool do_v = p.v_from != nullptr, do_k = p.k_from != nullptr;
  if (!do_v && !do_k) return invalid("neither v_from nor k_from given: nothing to encode");
  if (kv.win_cap <= 0) return invalid("win_cap " + std::to_string(kv.win_cap) + " is not positive");
  if (do_v) {
    const std::string e = check_stream("V", d, kv.v_latent_rank, kv.v_latent_bits, kv.v_rec,
                                       kv.v_win, kv.v_enc_w, kv.v_enc_b, p.v_to);
    if (!e.empty()) return invalid(e);
  }
  if (do_k) {
    const std::string e = check_stream("K", d, kv.k_latent_rank, kv.k_latent_bits, kv.k_rec,
                                       kv.k_win, kv.k_enc_w, kv.k_enc_b, p.k_to);
    if (!e.empty()) return invalid(e);
  }
  set_launch_error("");
  if (kv.batch <= 0 || kv.n_kv <= 0) return cudaSuccess;
  if (do_v && p.max_v_tokens > 0) {
    const latent_stream s{kv.v_win,         kv.v_rec,   kv.v_slot_records,
                          kv.v_enc_w,       kv.v_enc_b, kv.v_latent_rank,
                          kv.v_latent_bits, p.v_from,   p.v_to};
    latent_compress_kernel<<<dim3((p.max_v_tokens + kTokens - 1) / kTokens, kv.n_kv, kv.batch), d,
                             0, stream>>>(s, kv.n_kv, d, kv.win_cap);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  if (do_k && p.max_k_tokens > 0) {
    const latent_stream s{kv.k_win,         kv.k_rec,   kv.k_slot_records,
                          kv.k_enc_w,       kv.k_enc_b, kv.k_latent_rank,
                          kv.k_latent_bits, p.k_from,   p.k_to};
    latent_compress_kernel<<<dim3((p.max_k_tokens + kTokens - 1) / kTokens, kv.n_kv, kv.batch), d,
                             0, stream>>>(s, kv.n_kv, d, kv.win_cap);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

}  // namespace kvcal
