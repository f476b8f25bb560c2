// How one stream (K or V of one KV head of one layer) turns full-precision vectors into the bytes
// the cache holds, one method of the preset recipe each (runtime/preset_recipe.h):
//   none   fp16 vector                                   record = 1 token, d x 2 bytes
//   quant  per-token (KIVI V): groups of `group` channels record = 1 token,
//            fp16 scales [d/group], zeros [d/group] (asymmetric only), codes packed_bytes(d, bits)
//          per-channel (KIVI K): a block of `group` tokens record = `group` tokens,
//            fp16 scales [d], zeros [d] (asymmetric only), codes packed_bytes(group x d, bits)
//            token-major
//   pca    z = B (x - mu), x' = B^T z + mu    (B: [rank, d] basis rows, mu: [d])
//   ae     z = W_e x + b_e, x' = W_d z + b_d  (linear autoencoder, hidden == 0)
//          both as a linear codec, record = 1 token: fp16 latent [r], or for 8/4-bit latents
//          fp16 scale, fp16 zero, codes packed_bytes(r, bits) (one asymmetric group per token)
//   ae     hidden > 0: the MLP autoencoder (runtime/ae_mlp.h), the same record; not linear, so
//          maps() is null and attention reconstructs its tokens
// Records are plain bytes (unaligned; read through memcpy). Codecs keep small scratch buffers
// and are not thread-safe.
//
//   auto c = kvcal::make_codec(method, 128, nullptr);   // PCA / AE need kvcal::linear_maps
//   auto c = kvcal::make_stream_codec(method, 128, tensors, "layers.0.k.heads.1", "p.safetensors");
//   c->encode(x, rec);   // x: [c->block_tokens(), 128]  rec: [c->record_bytes()]
//   c->decode(rec, y);   // y: [c->block_tokens(), 128]
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/io/safetensors.h"
#include "runtime/preset_recipe.h"

namespace kvcal {

// Encoder / decoder of a linear codec, fp32.
struct linear_maps {
  int rank = 0, d = 0;
  std::vector<float> enc_w;  // [rank, d]
  std::vector<float> enc_b;  // [rank]
  std::vector<float> dec_w;  // [d, rank]
  std::vector<float> dec_b;  // [d]
  std::size_t bytes() const {
    return (enc_w.size() + enc_b.size() + dec_w.size() + dec_b.size()) * sizeof(float);
  }
};
// basis: [rank, d] (rows = principal axes, orthonormal), mean: [d].
linear_maps pca_maps(const float* basis, const float* mean, int rank, int d);
// enc_w: [latent, d], enc_b: [latent], dec_w: [d, latent], dec_b: [d].
linear_maps ae_maps(const float* enc_w, const float* enc_b, const float* dec_w, const float* dec_b,
                    int latent, int d);

struct ae_mlp_maps;  // runtime/ae_mlp.h

class kv_codec {
 public:
  virtual ~kv_codec() = default;
  kv_method_kind kind() const { return kind_; }
  int dim() const { return d_; }
  // Tokens encoded together into one record: 1, or the group of per-channel quantization.
  int block_tokens() const { return block_; }
  std::size_t record_bytes() const { return record_bytes_; }

  // x: [block_tokens, d] -> rec: [record_bytes].
  virtual void encode(const float* x, std::uint8_t* rec) = 0;
  // rec -> out: [block_tokens, d].
  virtual void decode(const std::uint8_t* rec, float* out) = 0;

  // Linear codecs (PCA, linear AE): x' = dec_w z + dec_b, so attention can run on latents.
  virtual const linear_maps* maps() const { return nullptr; }
  // rec -> z: [rank]. Codecs with a latent (PCA, AE of either architecture).
  virtual void decode_latent(const std::uint8_t* rec, float* z);

 protected:
  kv_codec(kv_method_kind kind, int d, int block, std::size_t record_bytes)
      : kind_(kind), d_(d), block_(block), record_bytes_(record_bytes) {}

 private:
  kv_method_kind kind_;
  int d_, block_;
  std::size_t record_bytes_;
};

// `maps` is required for pca / linear ae (its rank must match the method), `mlp` for an MLP ae
// (method.ae.hidden > 0); both are ignored otherwise.
std::unique_ptr<kv_codec> make_codec(const kv_method& m, int d, const linear_maps* maps,
                                     const ae_mlp_maps* mlp = nullptr);

// The codec of one stream with its weights read from a preset's tensors (names under `prefix`,
// e.g. "layers.3.v.heads.0"; shapes as runtime/preset.h checks them). Adds the fp32 bytes of the
// weights to *maybe_fixed_bytes. Errors name `source` and the tensor.
std::unique_ptr<kv_codec> make_stream_codec(const kv_method& m, int d,
                                            const std::vector<tensor_view>& tensors,
                                            const std::string& prefix, const std::string& source,
                                            std::size_t* maybe_fixed_bytes = nullptr);

// fp16 rows: the cache's full-precision windows use this layout too. x, out: [n, d].
void encode_fp16_rows(const float* x, std::size_t n, int d, std::uint8_t* rec);
void decode_fp16_rows(const std::uint8_t* rec, std::size_t n, int d, float* out);

}  // namespace kvcal
