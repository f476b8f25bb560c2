#include <string>

#include "kernels/cuda/latent_append.h"
#include "kernels/cuda/quant_rounding.cuh"

namespace kvcal {

namespace {

using namespace quant_dev;

// One latent record: grid (max_v_tokens, n_kv, B), block d (thread c loads channel c, thread
// i < r computes z_i). smem: x [128], z [128], codes [128].
__global__ void latent_compress_kernel(latent_compress_params p) {
  __shared__ float xs[128];
  __shared__ float zs[128];
  __shared__ unsigned char codes[128];
  __shared__ group_q grp;
  const packed_kv_view& kv = p.kv;
  const int g = blockIdx.y, b = blockIdx.z, c = threadIdx.x, d = kv.head_dim;
  const int r = kv.v_latent_rank, bits = kv.v_latent_bits;
  const int t = p.v_from[b] + static_cast<int>(blockIdx.x);
  if (t >= p.v_to[b]) return;
  const std::int64_t slot = static_cast<std::int64_t>(b) * kv.n_kv + g;
  xs[c] = __half2float(kv.v_win[(slot * kv.win_cap + t % kv.win_cap) * d + c]);
  __syncthreads();
  if (c < r) {  // the host's summation order, no FMA (see the header)
    const float* w = kv.v_enc_w + (static_cast<std::int64_t>(g) * r + c) * d;
    float acc = kv.v_enc_b[static_cast<std::int64_t>(g) * r + c];
    for (int i = 0; i < d; ++i) acc = __fadd_rn(acc, __fmul_rn(__ldg(w + i), xs[i]));
    zs[c] = acc;
  }
  __syncthreads();
  const std::size_t rec_bytes = latent_record_bytes_of(r, bits);
  std::uint8_t* rec =
      kv.v_rec + (slot * kv.v_slot_records + t) * static_cast<std::int64_t>(rec_bytes);
  if (bits == 16) {
    if (c < r) store_u16(rec + 2 * c, f2h_bits(zs[c]));
    return;
  }
  if (c == 0) {
    float mn = zs[0], mx = zs[0];
    for (int i = 1; i < r; ++i) {
      mn = fminf(mn, zs[i]);
      mx = fmaxf(mx, zs[i]);
    }
    grp = make_group(mn, mx, bits);
    store_u16(rec, grp.scale);
    store_u16(rec + 2, grp.zero);
  }
  __syncthreads();
  if (c < r) codes[c] = quant_code(zs[c], grp, bits);
  __syncthreads();
  pack_codes(codes, r, bits, rec + 4);
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
  latent_compress_kernel<<<dim3(p.max_v_tokens, kv.n_kv, kv.batch), d, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace kvcal
