#include <string>

#include "kernels/cuda/latent_append.h"
#include "kernels/cuda/quant_rounding.cuh"

namespace kvcal {

namespace {

using namespace quant_dev;

constexpr int kTokens = 8;  // tokens per block: each enc_w element loaded once for all of them

// kTokens latent records: grid (ceil(max_v_tokens / kTokens), n_kv, B), block d (thread c loads
// channel c of each token; thread i < r computes z_i of every token, one enc_w load per channel
// for all of them, each sum in the host's order without FMA; thread j < kTokens quantizes
// token j's group).
__global__ void latent_compress_kernel(latent_compress_params p) {
  __shared__ float xs[kTokens][128];
  __shared__ float zs[kTokens][128];
  __shared__ unsigned char codes[kTokens][128];
  __shared__ group_q grp[kTokens];
  const packed_kv_view& kv = p.kv;
  const int g = blockIdx.y, b = blockIdx.z, c = threadIdx.x, d = kv.head_dim;
  const int r = kv.v_latent_rank, bits = kv.v_latent_bits;
  const int t0 = p.v_from[b] + static_cast<int>(blockIdx.x) * kTokens;
  const int nt = min(kTokens, p.v_to[b] - t0);
  if (nt <= 0) return;
  const std::int64_t slot = static_cast<std::int64_t>(b) * kv.n_kv + g;
  for (int j = 0; j < kTokens; ++j)
    xs[j][c] =
        j < nt ? __half2float(kv.v_win[(slot * kv.win_cap + (t0 + j) % kv.win_cap) * d + c]) : 0.0f;
  __syncthreads();
  if (c < r) {
    const float* w = kv.v_enc_w + (static_cast<std::int64_t>(g) * r + c) * d;
    const float bias = kv.v_enc_b[static_cast<std::int64_t>(g) * r + c];
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
  std::uint8_t* rec0 = kv.v_rec + (slot * kv.v_slot_records + t0) * rec_bytes;
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

}  // namespace

cudaError_t launch_latent_compress(const latent_compress_params& p, cudaStream_t stream) {
  const packed_kv_view& kv = p.kv;
  const int d = kv.head_dim, r = kv.v_latent_rank, bits = kv.v_latent_bits;
  if (d != 64 && d != 128) return invalid("head_dim " + std::to_string(d) + " is not 64 or 128");
  if (r <= 0 || r % 16 != 0 || r > d)
    return invalid("latent rank " + std::to_string(r) +
                   " is not a positive multiple of 16 <= head_dim " + std::to_string(d));
  if (bits != 16 && bits != 8 && bits != 4)
    return invalid("latent bits " + std::to_string(bits) + " is not one of 16, 8, 4");
  if (!kv.v_rec || !kv.v_win || kv.win_cap <= 0 || !kv.v_enc_w || !kv.v_enc_b || !p.v_from ||
      !p.v_to)
    return invalid("V records, window, enc_w / enc_b or v_from / v_to missing");
  set_launch_error("");
  if (kv.batch <= 0 || kv.n_kv <= 0 || p.max_v_tokens <= 0) return cudaSuccess;
  latent_compress_kernel<<<dim3((p.max_v_tokens + kTokens - 1) / kTokens, kv.n_kv, kv.batch), d, 0,
                           stream>>>(p);
  return cudaGetLastError();
}

}  // namespace kvcal
