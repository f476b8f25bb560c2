/* kvcal runtime: the compressed KV cache behind a C-compatible interface (opaque handle, status
 * codes, no exceptions across the boundary). CPU reference; batch 1; not thread-safe per handle.
 *
 * A cache is created from a preset file (runtime/preset.h: the recipe, its tensors and the RoPE
 * parameters of the model it was made for) and the model's dimensions, which must match the
 * preset's fingerprint. Per layer, append the new tokens' keys BEFORE RoPE and values, then
 * attend with queries AFTER RoPE; the cache rotates reconstructed keys at their positions.
 *
 *   char err[256];
 *   kvcal_model_dims dims = {28, 28, 4, 128, 32768, 0};
 *   kvcal_cache* c = kvcal_cache_create("kivi-2.safetensors", &dims, err, sizeof err);
 *   if (!c) { fprintf(stderr, "%s\n", err); return 1; }
 *   kvcal_cache_reserve(c, 8192, 512);                        // optional: no allocation after
 *   kvcal_cache_append(c, layer, k_pre, v, pos, T);           // k_pre, v: [T, n_kv, d] float
 *   kvcal_cache_attend(c, layer, q_rope, pos, T, out);        // q_rope, out: [n_heads, T, d]
 *   kvcal_cache_stats st; kvcal_cache_get_stats(c, &st);      // st.bytes_held, st.ratio_vs_fp16
 *   kvcal_cache_destroy(c);
 * Every call but create and destroy returns KVCAL_OK or an error code; the message is then
 * kvcal_cache_last_error(c).
 */
#ifndef KVCAL_RUNTIME_H
#define KVCAL_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvcal_cache kvcal_cache;

typedef enum kvcal_status {
  KVCAL_OK = 0,
  KVCAL_ERR_INVALID_ARGUMENT = 1, /* bad input: shapes, positions, layer index, null pointers */
  KVCAL_ERR_INTERNAL = 2          /* anything else (out of memory, ...) */
} kvcal_status;

typedef struct kvcal_model_dims {
  int32_t n_layers;
  int32_t n_heads;    /* attention (query) heads */
  int32_t n_kv_heads; /* a divisor of n_heads (GQA) */
  int32_t head_dim;
  int64_t max_position_embeddings; /* dynamic / llama3 / yarn RoPE; 0 = not given */
  int64_t sliding_window;          /* attention mask window (Mistral); 0 = none */
} kvcal_model_dims;

typedef struct kvcal_cache_stats {
  int64_t tokens;              /* tokens held by layer 0 (every layer after a full forward) */
  uint64_t bytes_held;         /* pages attached to the cache, as allocated */
  uint64_t bytes_used;         /* live records inside them */
  uint64_t bytes_reserved;     /* every page obtained from the system */
  uint64_t fixed_bytes;        /* bases / weights, fp32 */
  uint64_t bytes_by_method[5]; /* held: [0..3] compressed records by method (none, quant, pca,
                                  ae), [4] fp16 sinks and windows */
  double fp16_bytes;           /* the same tokens as fp16 K + V */
  double ratio_vs_fp16;        /* fp16_bytes / bytes_held */
} kvcal_cache_stats;

/* Returns NULL on failure with the reason in err (NUL-terminated, truncated to err_len). */
kvcal_cache* kvcal_cache_create(const char* preset_path, const kvcal_model_dims* dims, char* err,
                                size_t err_len);
void kvcal_cache_destroy(kvcal_cache* cache);

int kvcal_cache_reserve(kvcal_cache* cache, int64_t max_context, int64_t max_step);
/* k_pre, v: [n_tokens, n_kv_heads, head_dim]; positions: [n_tokens], consecutive. */
int kvcal_cache_append(kvcal_cache* cache, int32_t layer, const float* k_pre, const float* v,
                       const int64_t* positions, int64_t n_tokens);
/* q_rope, out: [n_heads, n_tokens, head_dim]; positions: [n_tokens]. Causal. */
int kvcal_cache_attend(kvcal_cache* cache, int32_t layer, const float* q_rope,
                       const int64_t* positions, int64_t n_tokens, float* out);
int kvcal_cache_get_stats(kvcal_cache* cache, kvcal_cache_stats* out);
int64_t kvcal_cache_length(const kvcal_cache* cache, int32_t layer); /* -1 on a bad layer */
int kvcal_cache_reset(kvcal_cache* cache);
/* The message of the last failed call on this handle ("" if none). Valid until the next call. */
const char* kvcal_cache_last_error(const kvcal_cache* cache);

#ifdef __cplusplus
}
#endif

#endif /* KVCAL_RUNTIME_H */
