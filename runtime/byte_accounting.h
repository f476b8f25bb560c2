// What a preset's KV cache holds, in bytes, at a stated context length — every byte counted
// (DESIGN.md §3.3): packed codes (bits x elements), fp16 scales and zeros per group, full-precision
// windows (sinks, recent/residual tokens, guard tokens, incomplete per-channel groups, cluster
// centroids), int32 positions where eviction keeps arbitrary tokens, and PCA/AE latents. Fixed
// costs (bases, weights) are reported separately. docs/formats/preset.md states the rules.
//
//   kvcal::byte_accounting a = kvcal::account_bytes(recipe, 8192);
//   a.bytes_per_token();  a.ratio();   // vs FP16 K+V for the same 8192 tokens
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/preset_recipe.h"

namespace kvcal {

// One stream (K or V) of one layer, summed over its KV heads.
struct stream_bytes {
  double codes = 0;           // packed quantization codes or latents
  double scales = 0;          // fp16 scales and zeros
  double full_precision = 0;  // fp16 vectors: windows, sinks, guard, leftovers, centroids
  double total() const { return codes + scales + full_precision; }
};

struct layer_bytes {
  double retained = 0;  // tokens kept per KV head, mean over heads (centroids not included)
  stream_bytes k, v;
  double indices = 0;  // int32 positions of kept tokens, per KV head (shared by K and V)
  double total() const { return k.total() + v.total() + indices; }
};

struct byte_accounting {
  std::int64_t context = 0;
  std::vector<layer_bytes> layers;
  double fixed_bytes = 0;    // tensors of the preset, independent of context
  double fp16_bytes = 0;     // K+V of `context` tokens in fp16, all layers and KV heads
  bool upper_bound = false;  // a learned threshold policy: retention counted as all tokens

  double total() const;  // bytes held for the context, all layers
  double bytes_per_token() const { return total() / static_cast<double>(context); }
  double ratio() const { return fp16_bytes / total(); }  // compression vs FP16 K+V
  double retained_fraction() const;                      // mean over layers of retained / context
};

// `context` >= 1. `fixed_bytes` is what the preset's tensors take (preset_file::fixed_bytes()).
byte_accounting account_bytes(const preset_recipe& r, std::int64_t context, double fixed_bytes = 0);

}  // namespace kvcal
