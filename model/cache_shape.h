// The dimensions a full-precision KV cache takes from the model config (layers, KV heads, query
// heads, head_dim, sliding window) plus its batch: the common base of full_cache and
// static_cache, so both read the config the same way.
//
//   class my_cache : public kv_cache, private cache_shape {
//     my_cache(const model_config& cfg, std::int64_t batch) : cache_shape(cfg, batch) {}
//   };
#pragma once

#include <cstdint>

#include "runtime/model_config.h"

namespace kvcal {

struct cache_shape {
  cache_shape(const model_config& cfg, std::int64_t batch)
      : n_layers_(cfg.num_hidden_layers),
        batch_(batch),
        n_kv_(cfg.num_key_value_heads),
        n_heads_(cfg.num_attention_heads),
        head_dim_(cfg.head_dim),
        window_(cfg.sliding_window) {}

  std::int64_t n_layers_, batch_, n_kv_, n_heads_, head_dim_;
  std::int64_t window_;  // sliding window (0 = none)
};

}  // namespace kvcal
