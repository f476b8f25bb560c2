#include <string>

#include "kernels/cuda/quant_append.h"
#include "kernels/cuda/quant_rounding.cuh"

namespace kvcal {

namespace {

using namespace quant_dev;

// ---- kernels -----------------------------------------------------------------------------------

// grid (t_new, n_kv, B), block d.
__global__ void kv_window_append_kernel(kv_window_append_params p) {
  const packed_kv_view& kv = p.kv;
  const int i = blockIdx.x, g = blockIdx.y, b = blockIdx.z, c = threadIdx.x, d = kv.head_dim;
  const std::int64_t src = ((static_cast<std::int64_t>(b) * p.t_new + i) * kv.n_kv + g) * d + c;
  const int t = kv.n_tokens[b] + i;
  const std::int64_t dst =
      ((static_cast<std::int64_t>(b) * kv.n_kv + g) * kv.win_cap + t % kv.win_cap) * d + c;
  kv.k_win[dst] = __float2half_rn(p.k_new[src]);
  kv.v_win[dst] = __float2half_rn(p.v_new[src]);
}

// One per-channel K record: grid (max_k_blocks, n_kv, B), block d (one thread per channel).
// dynamic smem: group * d code bytes.
__global__ void quant_k_block_kernel(quant_compress_params p) {
  extern __shared__ unsigned char codes[];
  const packed_kv_view& kv = p.kv;
  const int g = blockIdx.y, b = blockIdx.z, c = threadIdx.x, d = kv.head_dim, G = kv.k_group;
  const int t0 = p.k_from[b] + static_cast<int>(blockIdx.x) * G;
  if (t0 + G > p.k_to[b]) return;
  const std::int64_t slot = static_cast<std::int64_t>(b) * kv.n_kv + g;
  const __half* win = kv.k_win + slot * kv.win_cap * d;
  float mn = 0.0f, mx = 0.0f;
  for (int j = 0; j < G; ++j) {
    const float x = __half2float(win[static_cast<std::int64_t>((t0 + j) % kv.win_cap) * d + c]);
    mn = j == 0 ? x : fminf(mn, x);
    mx = j == 0 ? x : fmaxf(mx, x);
  }
  const group_q q = make_group(mn, mx, kv.k_bits);
  for (int j = 0; j < G; ++j) {
    const float x = __half2float(win[static_cast<std::int64_t>((t0 + j) % kv.win_cap) * d + c]);
    codes[j * d + c] = quant_code(x, q, kv.k_bits);
  }
  const std::size_t rec_bytes = k_record_bytes(d, kv.k_bits, G);
  std::uint8_t* rec =
      kv.k_rec + (slot * kv.k_slot_records + t0 / G) * static_cast<std::int64_t>(rec_bytes);
  store_u16(rec + 2 * c, q.scale);
  store_u16(rec + 2 * d + 2 * c, q.zero);
  __syncthreads();
  pack_codes(codes, G * d, kv.k_bits, rec + 4 * d);
}

// One per-token V record: grid (max_v_tokens, n_kv, B), block d. smem: x [d], codes [d].
__global__ void quant_v_token_kernel(quant_compress_params p) {
  __shared__ float xs[128];
  __shared__ unsigned char codes[128];
  __shared__ group_q groups[8];
  const packed_kv_view& kv = p.kv;
  const int g = blockIdx.y, b = blockIdx.z, c = threadIdx.x, d = kv.head_dim, G = kv.v_group;
  const int t = p.v_from[b] + static_cast<int>(blockIdx.x);
  if (t >= p.v_to[b]) return;
  const std::int64_t slot = static_cast<std::int64_t>(b) * kv.n_kv + g;
  xs[c] = __half2float(kv.v_win[(slot * kv.win_cap + t % kv.win_cap) * d + c]);
  __syncthreads();
  if (c % G == 0) {
    float mn = xs[c], mx = xs[c];
    for (int i = 1; i < G; ++i) {
      mn = fminf(mn, xs[c + i]);
      mx = fmaxf(mx, xs[c + i]);
    }
    groups[c / G] = make_group(mn, mx, kv.v_bits);
  }
  __syncthreads();
  const group_q q = groups[c / G];
  codes[c] = quant_code(xs[c], q, kv.v_bits);
  const int n_groups = d / G;
  const std::size_t rec_bytes = v_record_bytes(d, kv.v_bits, G);
  std::uint8_t* rec =
      kv.v_rec + (slot * kv.v_slot_records + t) * static_cast<std::int64_t>(rec_bytes);
  if (c % G == 0) {
    store_u16(rec + 2 * (c / G), q.scale);
    store_u16(rec + 2 * n_groups + 2 * (c / G), q.zero);
  }
  __syncthreads();
  pack_codes(codes, d, kv.v_bits, rec + 4 * n_groups);
}

bool bits_ok(int bits) {
  return bits == 2 || bits == 3 || bits == 4 || bits == 8;
}

cudaError_t invalid(std::string msg) {
  set_launch_error(std::move(msg));
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_kv_window_append(const kv_window_append_params& p, cudaStream_t stream) {
  const packed_kv_view& kv = p.kv;
  if (kv.head_dim != 64 && kv.head_dim != 128)
    return invalid("kv_window_append: head_dim " + std::to_string(kv.head_dim) +
                   " is not 64 or 128");
  if (!kv.k_win || !kv.v_win || !kv.n_tokens || kv.win_cap <= 0 || !p.k_new || !p.v_new)
    return invalid("kv_window_append: missing window, counters or inputs");
  set_launch_error("");
  if (p.t_new <= 0 || kv.batch <= 0 || kv.n_kv <= 0) return cudaSuccess;
  kv_window_append_kernel<<<dim3(p.t_new, kv.n_kv, kv.batch), kv.head_dim, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_quant_compress(const quant_compress_params& p, cudaStream_t stream) {
  const packed_kv_view& kv = p.kv;
  const int d = kv.head_dim;
  if (d != 64 && d != 128)
    return invalid("quant_compress: head_dim " + std::to_string(d) + " is not 64 or 128");
  if (p.k_from && p.max_k_blocks > 0) {
    if (kv.k_latent_rank != 0)
      return invalid("quant_compress: K is in the latent mode (k_latent_rank " +
                     std::to_string(kv.k_latent_rank) +
                     "): its records are launch_latent_compress's, not per-channel ones");
    if (!bits_ok(kv.k_bits))
      return invalid("quant_compress: K bits " + std::to_string(kv.k_bits) +
                     " is not one of 2, 3, 4, 8");
    if (kv.k_group <= 0 || kv.k_group > 128)
      return invalid("quant_compress: K per-channel group " + std::to_string(kv.k_group) +
                     " is not in 1..128");
    if (!kv.k_rec || !kv.k_win || !p.k_to)
      return invalid("quant_compress: K records, window or k_to missing");
  }
  if (p.v_from && p.max_v_tokens > 0) {
    if (!bits_ok(kv.v_bits))
      return invalid("quant_compress: V bits " + std::to_string(kv.v_bits) +
                     " is not one of 2, 3, 4, 8");
    if (kv.v_group <= 0 || d % kv.v_group != 0 || d / kv.v_group > 8)
      return invalid("quant_compress: V per-token group " + std::to_string(kv.v_group) +
                     " must divide head_dim " + std::to_string(d) + " into at most 8 groups");
    if (!kv.v_rec || !kv.v_win || !p.v_to)
      return invalid("quant_compress: V records, window or v_to missing");
  }
  set_launch_error("");
  if (kv.batch <= 0 || kv.n_kv <= 0) return cudaSuccess;
  if (p.k_from && p.max_k_blocks > 0) {
    const std::size_t smem = static_cast<std::size_t>(kv.k_group) * static_cast<std::size_t>(d);
    quant_k_block_kernel<<<dim3(p.max_k_blocks, kv.n_kv, kv.batch), d, smem, stream>>>(p);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  if (p.v_from && p.max_v_tokens > 0) {
    quant_v_token_kernel<<<dim3(p.max_v_tokens, kv.n_kv, kv.batch), d, 0, stream>>>(p);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

}  // namespace kvcal
