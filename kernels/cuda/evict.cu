#include <string>

#include "kernels/cuda/evict.h"

namespace kvcal {

namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;

// (score, pos) as one orderable key: fp32 bits made monotone (negative scores flip), pos below.
__device__ __forceinline__ unsigned long long order_key(float score, int pos) {
  unsigned u = __float_as_uint(score);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<unsigned long long>(u) << 32) | static_cast<unsigned>(pos);
}

// grid B * n_kv, block kThreads: while held > R, the lowest-keyed non-recent row goes and the
// last row moves into its place (once per decode step).
__global__ void evict_one_kernel(evict_one_params p) {
  __shared__ unsigned long long s_key[kWarpsPerBlock];
  __shared__ int s_row[kWarpsPerBlock];
  const packed_kv_view& kv = p.kv;
  const int slot = blockIdx.x, b = slot / kv.n_kv;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const std::int64_t seen = p.seen[b];
  int n = p.held[b];
  const std::int64_t R = evict_retained(p.budget, seen);
  if (p.maybe_held_out && tid == 0 && slot % kv.n_kv == 0)
    p.maybe_held_out[b] = static_cast<int>(n < R ? n : R);
  int* pos = p.pos + static_cast<std::int64_t>(slot) * kv.win_cap;
  float* score = p.score + static_cast<std::int64_t>(slot) * kv.win_cap;
  const int chunks = kv.head_dim / 8;  // 16-byte chunks of a row
  while (n > R) {
    // lo <= pos < lim: may go (below lo: sinks, from lim on: the recent share)
    const std::int64_t lim = seen - evict_recent(p.budget, R, n), lo = evict_sinks(p.budget, R, n);
    unsigned long long best = ~0ull;
    int row = -1;
    for (int i = tid; i < n; i += kThreads) {
      const int ps = pos[i];
      if (ps >= lim || ps < lo) continue;
      const unsigned long long k = order_key(score[i], ps);
      if (k < best) best = k, row = i;
    }
#pragma unroll
    for (int o = 16; o > 0; o /= 2) {
      const unsigned long long ok = __shfl_xor_sync(0xffffffffu, best, o);
      const int orow = __shfl_xor_sync(0xffffffffu, row, o);
      if (ok < best) best = ok, row = orow;
    }
    if (lane == 0) s_key[warp] = best, s_row[warp] = row;
    __syncthreads();
    best = s_key[0];
    row = s_row[0];
    for (int w = 1; w < kWarpsPerBlock; ++w)
      if (s_key[w] < best) best = s_key[w], row = s_row[w];
    const int last = n - 1;
    if (row >= 0 && row != last) {  // row < 0 cannot happen (recent < R < n); nothing moves then
      const std::int64_t src = static_cast<std::int64_t>(slot) * kv.win_cap + last;
      const std::int64_t dst = static_cast<std::int64_t>(slot) * kv.win_cap + row;
      const uint4* ks = reinterpret_cast<const uint4*>(kv.k_win + src * kv.head_dim);
      const uint4* vs = reinterpret_cast<const uint4*>(kv.v_win + src * kv.head_dim);
      uint4* kd = reinterpret_cast<uint4*>(kv.k_win + dst * kv.head_dim);
      uint4* vd = reinterpret_cast<uint4*>(kv.v_win + dst * kv.head_dim);
      for (int c = tid; c < chunks; c += kThreads) {
        kd[c] = ks[c];
        vd[c] = vs[c];
      }
      if (tid == 0) {
        pos[row] = pos[last];
        score[row] = score[last];
      }
    }
    --n;
    __syncthreads();  // the move and s_key reads are done before the next round
  }
}

// grid B * n_kv, block kThreads: radix select (8 bits a pass, 8 passes) of the k-th largest key
// among the non-recent rows, then the kept rows' indices in row order (block-wide ballot scan).
__global__ void select_kept_kernel(select_kept_params p) {
  __shared__ unsigned hist[256];
  __shared__ unsigned long long s_prefix;
  __shared__ int s_warp[kWarpsPerBlock];
  const int slot = blockIdx.x, b = slot / p.n_kv;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const std::int64_t seen = p.seen[b];
  const int n = p.held[b];
  const std::int64_t R = evict_retained(p.budget, seen);
  int* kept = p.kept + static_cast<std::int64_t>(slot) * p.kept_stride;
  if (n <= R) {
    for (int i = tid; i < n; i += kThreads) kept[i] = i;
    return;
  }
  const float* score = p.score + static_cast<std::int64_t>(slot) * p.stride;
  const int* pos = p.maybe_pos ? p.maybe_pos + static_cast<std::int64_t>(slot) * p.stride : nullptr;
  const std::int64_t rec = evict_recent(p.budget, R, n), lim = seen - rec;
  const std::int64_t lo = evict_sinks(p.budget, R, n);
  const std::int64_t k = R - rec - lo;  // heavy hitters kept
  unsigned long long prefix = 0, mask = 0;
  if (k > 0) {
    unsigned remaining = static_cast<unsigned>(k);
    for (int shift = 56; shift >= 0; shift -= 8) {
      for (int i = tid; i < 256; i += kThreads) hist[i] = 0;
      __syncthreads();
      for (int i = tid; i < n; i += kThreads) {
        const int ps = pos ? pos[i] : i;
        if (ps >= lim || ps < lo) continue;
        const unsigned long long key = order_key(score[i], ps);
        if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
      }
      __syncthreads();
      if (tid == 0) {
        unsigned cum = 0;
        int d = 255;
        for (; d > 0; --d) {
          if (cum + hist[d] >= remaining) break;
          cum += hist[d];
        }
        remaining -= cum;
        s_prefix = prefix | (static_cast<unsigned long long>(d) << shift);
        hist[0] = remaining;  // broadcast (hist is rebuilt next pass)
      }
      __syncthreads();
      prefix = s_prefix;
      remaining = hist[0];
      mask |= 255ull << shift;
      __syncthreads();
    }
  }
  // Kept: recent, sinks, or a key >= the k-th largest (keys are unique: exactly k of them).
  int base = 0;
  for (int i0 = 0; i0 < n; i0 += kThreads) {
    const int i = i0 + tid;
    bool keep = false;
    if (i < n) {
      const int ps = pos ? pos[i] : i;
      keep = ps >= lim || ps < lo || (k > 0 && order_key(score[i], ps) >= prefix);
    }
    const unsigned bal = __ballot_sync(0xffffffffu, keep);
    if (lane == 0) s_warp[warp] = __popc(bal);
    __syncthreads();
    int off = base, total = 0;
    for (int w = 0; w < kWarpsPerBlock; ++w) {
      if (w < warp) off += s_warp[w];
      total += s_warp[w];
    }
    off += __popc(bal & ((1u << lane) - 1u));
    if (keep && off < p.kept_stride) kept[off] = i;
    base += total;
    __syncthreads();
  }
}

cudaError_t invalid(const std::string& msg) {
  set_launch_error(msg);
  return cudaErrorInvalidValue;
}

bool budget_ok(const evict_budget& b) {
  if (b.window_policy) return b.tokens >= 1 && b.sinks >= 0 && b.sinks <= b.tokens;
  return (b.retain > 0.0 || b.tokens >= 1) && b.heavy >= 0.0 && b.heavy <= 1.0 && b.window >= 0;
}

}  // namespace

cudaError_t launch_evict_one(const evict_one_params& p, cudaStream_t stream) {
  const packed_kv_view& kv = p.kv;
  if (kv.batch <= 0 || kv.n_kv <= 0 || kv.head_dim <= 0 || kv.head_dim % 8 != 0 || kv.win_cap <= 0)
    return invalid("evict_one: batch " + std::to_string(kv.batch) + ", " + std::to_string(kv.n_kv) +
                   " KV heads, head_dim " + std::to_string(kv.head_dim) + ", win_cap " +
                   std::to_string(kv.win_cap) +
                   ": need positive counts and head_dim a multiple of 8");
  if (kv.k_bits != 16 || kv.v_bits != 16 || kv.k_latent_rank != 0 || kv.v_latent_rank != 0)
    return invalid("evict_one: the cache must be fp16 (bits 16, no latent mode), got K " +
                   std::to_string(kv.k_bits) + " / V " + std::to_string(kv.v_bits) +
                   " bits, latent ranks K " + std::to_string(kv.k_latent_rank) + " / V " +
                   std::to_string(kv.v_latent_rank));
  if (!kv.k_win || !kv.v_win || !p.pos || !p.score || !p.held || !p.seen)
    return invalid("evict_one: k_win, v_win, pos, score, held and seen are required");
  if (p.maybe_held_out == p.held) return invalid("evict_one: maybe_held_out must not alias held");
  if (!budget_ok(p.budget))
    return invalid(
        "evict_one: budget needs retain > 0 or tokens >= 1, heavy in [0, 1] (window: "
        "tokens >= 1, 0 <= sinks <= tokens)");
  set_launch_error("");
  evict_one_kernel<<<kv.batch * kv.n_kv, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_select_kept(const select_kept_params& p, cudaStream_t stream) {
  if (p.batch <= 0 || p.n_kv <= 0 || p.stride <= 0 || p.kept_stride <= 0)
    return invalid("select_kept: batch " + std::to_string(p.batch) + ", " + std::to_string(p.n_kv) +
                   " KV heads, stride " + std::to_string(p.stride) + ", kept stride " +
                   std::to_string(p.kept_stride) + ": need positive values");
  if (!p.score || !p.held || !p.seen || !p.kept)
    return invalid("select_kept: score, held, seen and kept are required");
  if (!budget_ok(p.budget))
    return invalid(
        "select_kept: budget needs retain > 0 or tokens >= 1, heavy in [0, 1] "
        "(window: tokens >= 1, 0 <= sinks <= tokens)");
  set_launch_error("");
  select_kept_kernel<<<p.batch * p.n_kv, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace kvcal
