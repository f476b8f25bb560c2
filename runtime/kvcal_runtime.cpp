// The C interface of the compressed cache: every exception stops here and becomes a status code.
#include "runtime/kvcal_runtime.h"

#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>

#include "kernels/common/error.h"
#include "runtime/compressed_cache.h"
#include "runtime/preset.h"

struct kvcal_cache {
  std::unique_ptr<kvcal::preset_file> preset;
  std::unique_ptr<kvcal::compressed_cache> cache;
  std::string last_error;
};

namespace {

void copy_error(const std::string& msg, char* err, size_t err_len) {
  if (!err || err_len == 0) return;
  const size_t n = std::min(msg.size(), err_len - 1);
  std::memcpy(err, msg.data(), n);
  err[n] = '\0';
}

// Runs f, mapping exceptions to status codes and remembering the message on the handle.
template <typename F>
int guarded(kvcal_cache* c, F&& f) {
  if (!c) return KVCAL_ERR_INVALID_ARGUMENT;
  try {
    f();
    return KVCAL_OK;
  } catch (const kvcal::error& e) {
    c->last_error = e.what();
    return KVCAL_ERR_INVALID_ARGUMENT;
  } catch (const std::bad_alloc&) {
    c->last_error = "out of memory";
  } catch (const std::exception& e) {
    c->last_error = e.what();
  } catch (...) {
    c->last_error = "unknown error";
  }
  return KVCAL_ERR_INTERNAL;
}

}  // namespace

extern "C" {

kvcal_cache* kvcal_cache_create(const char* preset_path, const kvcal_model_dims* dims, char* err,
                                size_t err_len) {
  copy_error("", err, err_len);
  try {
    KVCAL_CHECK(preset_path && dims, "kvcal_cache_create: null preset path or dims");
    auto c = std::make_unique<kvcal_cache>();
    c->preset = std::make_unique<kvcal::preset_file>(preset_path);
    kvcal::cache_dims d;
    d.n_layers = dims->n_layers;
    d.n_heads = dims->n_heads;
    d.n_kv_heads = dims->n_kv_heads;
    d.head_dim = dims->head_dim;
    d.max_position_embeddings = dims->max_position_embeddings;
    d.sliding_window = dims->sliding_window;
    c->cache = std::make_unique<kvcal::compressed_cache>(c->preset->recipe(),
                                                         c->preset->tensors().tensors(), d,
                                                         kvcal::cache_options{}, c->preset->path());
    return c.release();
  } catch (const std::exception& e) {
    copy_error(e.what(), err, err_len);
  } catch (...) {
    copy_error("unknown error", err, err_len);
  }
  return nullptr;
}

void kvcal_cache_destroy(kvcal_cache* cache) {
  delete cache;
}

int kvcal_cache_reserve(kvcal_cache* c, int64_t max_context, int64_t max_step) {
  return guarded(c, [&] { c->cache->reserve(max_context, max_step); });
}

int kvcal_cache_append(kvcal_cache* c, int32_t layer, const float* k_pre, const float* v,
                       const int64_t* positions, int64_t n_tokens) {
  return guarded(c, [&] {
    KVCAL_CHECK(k_pre && v && positions, "kvcal_cache_append: null buffer");
    c->cache->append(layer, k_pre, v, positions, n_tokens);
  });
}

int kvcal_cache_attend(kvcal_cache* c, int32_t layer, const float* q_rope, const int64_t* positions,
                       int64_t n_tokens, float* out) {
  return guarded(c, [&] {
    KVCAL_CHECK(q_rope && positions && out, "kvcal_cache_attend: null buffer");
    c->cache->attend(layer, q_rope, positions, n_tokens, out);
  });
}

int kvcal_cache_get_stats(kvcal_cache* c, kvcal_cache_stats* out) {
  return guarded(c, [&] {
    KVCAL_CHECK(out, "kvcal_cache_get_stats: null output");
    const kvcal::cache_stats s = c->cache->stats();
    *out = kvcal_cache_stats{};
    out->tokens = s.tokens.empty() ? 0 : s.tokens[0];
    out->bytes_held = s.bytes_held;
    out->bytes_used = s.bytes_used;
    out->bytes_reserved = s.bytes_reserved;
    out->fixed_bytes = s.fixed_bytes;
    for (size_t i = 0; i < 4; ++i) out->bytes_by_method[i] = s.compressed[i].bytes_held;
    out->bytes_by_method[4] = s.fp16_window.bytes_held;
    out->fp16_bytes = s.fp16_bytes;
    out->ratio_vs_fp16 = s.ratio();
  });
}

int64_t kvcal_cache_length(const kvcal_cache* c, int32_t layer) {
  if (!c || layer < 0 || layer >= c->cache->dims().n_layers) return -1;
  return c->cache->length(layer);
}

int kvcal_cache_reset(kvcal_cache* c) {
  return guarded(c, [&] { c->cache->reset(); });
}

const char* kvcal_cache_last_error(const kvcal_cache* c) {
  return c ? c->last_error.c_str() : "null kvcal_cache";
}

}  // extern "C"
