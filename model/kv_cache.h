// The KV-cache interface every attention step of the Llama-family forward goes through, and the
// per-layer activation hook that capture uses.
//
// Per layer and step the forward computes Q, K, V for the new tokens, then calls
//   cache.append(layer, {k_pre, k_rope, v, positions});   // store the new tokens
//   out = cache.attend(layer, q_rope, positions);          // causal attention over all held tokens
// A plain full-precision cache (model/full_cache.h) stores K after RoPE; the compressed runtime
// stores K before RoPE (its bases are fitted there, DESIGN.md §3.1) and applies RoPE itself at
// the tokens' original positions. Positions are absolute, counted from the start of the sequence.
//
//   kvcal::full_cache cache(cfg, batch, device, dtype);
//   model.forward(ids, cache);            // prefill
//   model.forward(next_id, cache);        // one decode step, attends to everything cached
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "kernels/common/error.h"

namespace kvcal {

// New tokens of one layer. B = batch, T = new tokens, n_kv = KV heads, d = head_dim.
struct kv_append {
  at::Tensor k_pre;      // [B, n_kv, T, d] keys before RoPE
  at::Tensor k_rope;     // [B, n_kv, T, d] keys after RoPE
  at::Tensor v;          // [B, n_kv, T, d]
  at::Tensor positions;  // [T] int64, absolute positions of the new tokens (same for every row)
  at::Tensor hidden;     // [B, T, hidden] hidden state entering attention (optional; learned
                         // eviction on hidden-state features reads it)
};

class kv_cache {
 public:
  virtual ~kv_cache() = default;
  // Stores the new tokens of `layer`.
  virtual void append(int layer, const kv_append& kv) = 0;
  // q_rope: [B, n_heads, T, d] queries after RoPE for tokens at `positions` ([T] int64).
  // Returns [B, n_heads, T, d]: softmax(q k^T / sqrt(d) + causal mask) v over every token held by
  // `layer` (GQA: query head h reads KV head h / (n_heads / n_kv)); a query at position p sees the
  // held tokens at positions <= p (and, with a sliding window w, > p - w).
  virtual at::Tensor attend(int layer, const at::Tensor& q_rope, const at::Tensor& positions) = 0;
  // Tokens seen so far (the next token's position). Same for every layer once a forward is done.
  virtual std::int64_t length() const = 0;
  // Forgets every token (a new sequence starts at position 0).
  virtual void reset() = 0;

  // CUDA-graph decode (model/decode_graph.h). True when a one-token forward through this cache
  // launches the same work with the same arguments at every step (step-dependent counters live
  // and advance on the device, nothing is read back), so one step can be captured and replayed.
  virtual bool graph_safe() const { return false; }
  // Graph-safe caches only: the most tokens held (a replayed step must not pass it), and the
  // host bookkeeping set to `n` held tokens after replays appended tokens on the device (a replay
  // runs no host code). The device state is not touched.
  virtual std::int64_t graph_capacity() const {
    KVCAL_FAIL("kv_cache: this cache is not graph safe (no CUDA-graph decode)");
  }
  virtual void set_host_length(std::int64_t n) {
    KVCAL_FAIL("kv_cache: this cache is not graph safe (cannot set its length to ", n, ")");
  }
};

// Activations of one layer for the tokens of one forward call, given to a layer_hook before the
// attention step. Shapes: B = batch, T = new tokens.
struct layer_activations {
  int layer = 0;
  at::Tensor hidden;     // [B, T, hidden]  hidden state entering attention (after input RMSNorm)
  at::Tensor q;          // [B, n_heads, T, d] before RoPE
  at::Tensor q_rope;     // [B, n_heads, T, d] after RoPE
  at::Tensor k;          // [B, n_kv, T, d] before RoPE
  at::Tensor k_rope;     // [B, n_kv, T, d] after RoPE
  at::Tensor v;          // [B, n_kv, T, d]
  at::Tensor positions;  // [T] int64
};

class layer_hook {
 public:
  virtual ~layer_hook() = default;
  virtual void on_layer(const layer_activations& a) = 0;
};

}  // namespace kvcal
