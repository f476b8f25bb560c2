#include "runtime/kv_codec.h"

#include <cstring>

#include "kernels/common/error.h"
#include "kernels/common/half.h"
#include "kernels/cpu/bitpack.h"
#include "kernels/cpu/quantize.h"
#include "runtime/ae_mlp.h"

namespace kvcal {

namespace {

std::size_t scale_bytes(bool symmetric) {
  return symmetric ? 2 : 4;
}

// fp16 values: identical to the window layout.
class fp16_codec final : public kv_codec {
 public:
  explicit fp16_codec(int d)
      : kv_codec(kv_method_kind::none, d, 1, static_cast<std::size_t>(d) * 2) {}
  void encode(const float* x, std::uint8_t* rec) override { encode_fp16_rows(x, 1, dim(), rec); }
  void decode(const std::uint8_t* rec, float* out) override {
    decode_fp16_rows(rec, 1, dim(), out);
  }
};

// Record: scales [n_scales] fp16, zeros [n_scales] fp16 (asymmetric), codes.
class quant_codec final : public kv_codec {
 public:
  quant_codec(const quant_params& q, int d)
      : kv_codec(kv_method_kind::quant, d, q.axis == quant_axis::per_channel ? q.group : 1,
                 record_size(q, d)),
        spec_{q.bits, q.group, q.symmetric},
        per_channel_(q.axis == quant_axis::per_channel),
        n_scales_(per_channel_ ? static_cast<std::size_t>(d)
                               : static_cast<std::size_t>(d / q.group)),
        scales_(n_scales_),
        zeros_(n_scales_) {
    KVCAL_CHECK(per_channel_ || d % q.group == 0, "per-token quantization group ", q.group,
                " does not divide head_dim ", d);
  }

  static std::size_t record_size(const quant_params& q, int d) {
    const std::size_t D = static_cast<std::size_t>(d);
    if (q.axis == quant_axis::per_channel)
      return D * scale_bytes(q.symmetric) +
             packed_bytes(static_cast<std::size_t>(q.group) * D, q.bits);
    return D / static_cast<std::size_t>(q.group) * scale_bytes(q.symmetric) +
           packed_bytes(D, q.bits);
  }

  void encode(const float* x, std::uint8_t* rec) override {
    std::uint8_t* codes = rec + n_scales_ * scale_bytes(spec_.symmetric);
    if (per_channel_)
      quantize_per_channel(x, dim(), spec_, codes, scales_.data(), zeros_.data());
    else
      quantize_per_token(x, dim(), spec_, codes, scales_.data(), zeros_.data());
    std::memcpy(rec, scales_.data(), n_scales_ * 2);
    if (!spec_.symmetric) std::memcpy(rec + n_scales_ * 2, zeros_.data(), n_scales_ * 2);
  }

  void decode(const std::uint8_t* rec, float* out) override {
    std::memcpy(scales_.data(), rec, n_scales_ * 2);
    if (!spec_.symmetric) std::memcpy(zeros_.data(), rec + n_scales_ * 2, n_scales_ * 2);
    const std::uint8_t* codes = rec + n_scales_ * scale_bytes(spec_.symmetric);
    if (per_channel_)
      dequantize_per_channel(codes, scales_.data(), zeros_.data(), dim(), spec_, out);
    else
      dequantize_per_token(codes, scales_.data(), zeros_.data(), dim(), spec_, out);
  }

 private:
  quant_spec spec_;
  bool per_channel_;
  std::size_t n_scales_;
  std::vector<std::uint16_t> scales_, zeros_;  // scratch: records are unaligned
};

// Latent record of PCA / AE: fp16 latent [r]; or fp16 scale, fp16 zero, codes
// packed_bytes(r, bits) (one asymmetric group per token).
std::size_t latent_record_bytes(int rank, int bits) {
  return bits == 16 ? static_cast<std::size_t>(rank) * 2
                    : 4 + packed_bytes(static_cast<std::size_t>(rank), bits);
}

void store_latent(const float* z, int r, int bits, std::uint8_t* rec) {
  if (bits == 16) {
    encode_fp16_rows(z, 1, r, rec);
    return;
  }
  std::uint8_t* codes = rec + 4;
  std::memset(codes, 0, packed_bytes(static_cast<std::size_t>(r), bits));
  std::uint16_t s = 0, zero = 0;
  quantize_group(z, static_cast<std::size_t>(r), 1, bits, false, codes, 0, 1, &s, &zero);
  std::memcpy(rec, &s, 2);
  std::memcpy(rec + 2, &zero, 2);
}

void load_latent(const std::uint8_t* rec, int r, int bits, float* z) {
  if (bits == 16) {
    decode_fp16_rows(rec, 1, r, z);
    return;
  }
  std::uint16_t s, zero;
  std::memcpy(&s, rec, 2);
  std::memcpy(&zero, rec + 2, 2);
  const float sf = fp16_to_float(s), zf = fp16_to_float(zero);
  for (int i = 0; i < r; ++i)
    z[i] =
        dequantize_code(get_bits(rec + 4, static_cast<std::size_t>(i), bits), sf, zf, bits, false);
}

void check_latent_bits(int bits) {
  KVCAL_CHECK(bits == 16 || bits == 8 || bits == 4, "latent bits ", bits,
              " is not one of 16, 8, 4");
}

class linear_codec final : public kv_codec {
 public:
  linear_codec(kv_method_kind kind, int bits, const linear_maps& maps)
      : kv_codec(kind, maps.d, 1, latent_record_bytes(maps.rank, bits)),
        bits_(bits),
        maps_(maps),
        z_(static_cast<std::size_t>(maps.rank)) {
    check_latent_bits(bits);
  }

  const linear_maps* maps() const override { return &maps_; }

  void encode(const float* x, std::uint8_t* rec) override {
    const int r = maps_.rank, d = maps_.d;
    for (int i = 0; i < r; ++i) {  // z = W_e x + b_e
      const float* w = &maps_.enc_w[static_cast<std::size_t>(i) * static_cast<std::size_t>(d)];
      float acc = maps_.enc_b[static_cast<std::size_t>(i)];
      for (int c = 0; c < d; ++c) acc += w[c] * x[c];
      z_[static_cast<std::size_t>(i)] = acc;
    }
    store_latent(z_.data(), r, bits_, rec);
  }

  void decode_latent(const std::uint8_t* rec, float* z) override {
    load_latent(rec, maps_.rank, bits_, z);
  }

  void decode(const std::uint8_t* rec, float* out) override {
    decode_latent(rec, z_.data());
    const int r = maps_.rank, d = maps_.d;
    for (int c = 0; c < d; ++c) {  // x' = W_d z + b_d
      const float* w = &maps_.dec_w[static_cast<std::size_t>(c) * static_cast<std::size_t>(r)];
      float acc = maps_.dec_b[static_cast<std::size_t>(c)];
      for (int i = 0; i < r; ++i) acc += w[i] * z_[static_cast<std::size_t>(i)];
      out[c] = acc;
    }
  }

 private:
  int bits_;
  linear_maps maps_;
  std::vector<float> z_;  // [rank] scratch
};

// The MLP autoencoder (runtime/ae_mlp.h); record as the linear codecs'. No maps(): the decoder
// is not linear in z, so the cache reconstructs these tokens before attending.
class mlp_ae_codec final : public kv_codec {
 public:
  mlp_ae_codec(int bits, const ae_mlp_maps& maps)
      : kv_codec(kv_method_kind::ae, maps.linear.d, 1, latent_record_bytes(maps.linear.rank, bits)),
        bits_(bits),
        maps_(maps),
        z_(static_cast<std::size_t>(maps.linear.rank)),
        h_(static_cast<std::size_t>(maps.hidden)) {
    check_latent_bits(bits);
  }

  void encode(const float* x, std::uint8_t* rec) override {
    ae_mlp_encode(maps_, x, z_.data(), h_.data());
    store_latent(z_.data(), maps_.linear.rank, bits_, rec);
  }
  void decode_latent(const std::uint8_t* rec, float* z) override {
    load_latent(rec, maps_.linear.rank, bits_, z);
  }
  void decode(const std::uint8_t* rec, float* out) override {
    decode_latent(rec, z_.data());
    ae_mlp_decode(maps_, z_.data(), out, h_.data());
  }

 private:
  int bits_;
  ae_mlp_maps maps_;
  std::vector<float> z_, h_;  // [rank], [hidden] scratch
};

}  // namespace

void kv_codec::decode_latent(const std::uint8_t*, float*) {
  KVCAL_ASSERT(false, "decode_latent on a codec without a latent space");
}

void encode_fp16_rows(const float* x, std::size_t n, int d, std::uint8_t* rec) {
  const std::size_t m = n * static_cast<std::size_t>(d);
  for (std::size_t i = 0; i < m; ++i) {
    const std::uint16_t h = float_to_fp16(x[i]);
    std::memcpy(rec + 2 * i, &h, 2);
  }
}

void decode_fp16_rows(const std::uint8_t* rec, std::size_t n, int d, float* out) {
  const std::size_t m = n * static_cast<std::size_t>(d);
  for (std::size_t i = 0; i < m; ++i) {
    std::uint16_t h;
    std::memcpy(&h, rec + 2 * i, 2);
    out[i] = fp16_to_float(h);
  }
}

linear_maps pca_maps(const float* basis, const float* mean, int rank, int d) {
  linear_maps m;
  m.rank = rank;
  m.d = d;
  const std::size_t R = static_cast<std::size_t>(rank), D = static_cast<std::size_t>(d);
  m.enc_w.assign(basis, basis + R * D);
  m.enc_b.resize(R);
  m.dec_w.resize(D * R);
  m.dec_b.assign(mean, mean + D);
  for (std::size_t i = 0; i < R; ++i) {  // b_e = -B mu
    double acc = 0;
    for (std::size_t c = 0; c < D; ++c) acc += static_cast<double>(basis[i * D + c]) * mean[c];
    m.enc_b[i] = static_cast<float>(-acc);
    for (std::size_t c = 0; c < D; ++c) m.dec_w[c * R + i] = basis[i * D + c];  // W_d = B^T
  }
  return m;
}

linear_maps ae_maps(const float* enc_w, const float* enc_b, const float* dec_w, const float* dec_b,
                    int latent, int d) {
  linear_maps m;
  m.rank = latent;
  m.d = d;
  const std::size_t R = static_cast<std::size_t>(latent), D = static_cast<std::size_t>(d);
  m.enc_w.assign(enc_w, enc_w + R * D);
  m.enc_b.assign(enc_b, enc_b + R);
  m.dec_w.assign(dec_w, dec_w + D * R);
  m.dec_b.assign(dec_b, dec_b + D);
  return m;
}

std::unique_ptr<kv_codec> make_codec(const kv_method& m, int d, const linear_maps* maps,
                                     const ae_mlp_maps* mlp) {
  switch (m.kind) {
    case kv_method_kind::none:
      return std::make_unique<fp16_codec>(d);
    case kv_method_kind::quant:
      return std::make_unique<quant_codec>(m.quant, d);
    case kv_method_kind::pca:
    case kv_method_kind::ae: {
      const bool pca = m.kind == kv_method_kind::pca;
      const int rank = pca ? m.pca.rank : m.ae.latent;
      if (!pca && m.ae.hidden > 0) {
        KVCAL_CHECK(
            mlp && mlp->linear.rank == rank && mlp->linear.d == d && mlp->hidden == m.ae.hidden,
            "ae: the MLP codec needs weights of latent ", rank, ", dim ", d, " and hidden width ",
            m.ae.hidden);
        return std::make_unique<mlp_ae_codec>(m.ae.latent_bits, *mlp);
      }
      KVCAL_CHECK(maps && maps->rank == rank && maps->d == d, kv_method_name(m.kind),
                  ": the codec needs encoder/decoder tensors of rank ", rank, " and dim ", d);
      return std::make_unique<linear_codec>(m.kind, pca ? m.pca.latent_bits : m.ae.latent_bits,
                                            *maps);
    }
  }
  KVCAL_FAIL("unknown KV method ", static_cast<int>(m.kind));
}

std::unique_ptr<kv_codec> make_stream_codec(const kv_method& m, int d,
                                            const std::vector<tensor_view>& tensors,
                                            const std::string& prefix, const std::string& source,
                                            std::size_t* maybe_fixed_bytes) {
  auto get = [&](const std::string& suffix) {
    const std::string name = prefix + suffix;
    for (const auto& t : tensors)
      if (t.name == name) return to_float(t);
    KVCAL_FAIL(source, ": no tensor '", name, "'");
  };
  std::size_t bytes = 0;
  std::unique_ptr<kv_codec> c;
  if (m.kind == kv_method_kind::pca) {
    const auto basis = get(".pca.basis"), mean = get(".pca.mean");
    const linear_maps maps = pca_maps(basis.data(), mean.data(), m.pca.rank, d);
    bytes = maps.bytes();
    c = make_codec(m, d, &maps);
  } else if (m.kind == kv_method_kind::ae) {
    const auto ew = get(".ae.encoder.weight"), eb = get(".ae.encoder.bias");
    const auto dw = get(".ae.decoder.weight"), db = get(".ae.decoder.bias");
    const linear_maps maps = ae_maps(ew.data(), eb.data(), dw.data(), db.data(), m.ae.latent, d);
    if (m.ae.hidden > 0) {
      const auto e1w = get(".ae.encoder.mlp.fc1.weight"), e1b = get(".ae.encoder.mlp.fc1.bias");
      const auto e2w = get(".ae.encoder.mlp.fc2.weight");
      const auto d1w = get(".ae.decoder.mlp.fc1.weight"), d1b = get(".ae.decoder.mlp.fc1.bias");
      const auto d2w = get(".ae.decoder.mlp.fc2.weight");
      const ae_mlp_maps mlp = ae_mlp_maps_of(maps, m.ae.hidden, e1w.data(), e1b.data(), e2w.data(),
                                             d1w.data(), d1b.data(), d2w.data());
      bytes = mlp.bytes();
      c = make_codec(m, d, nullptr, &mlp);
    } else {
      bytes = maps.bytes();
      c = make_codec(m, d, &maps);
    }
  } else {
    c = make_codec(m, d, nullptr);
  }
  if (maybe_fixed_bytes) *maybe_fixed_bytes += bytes;
  return c;
}

}  // namespace kvcal
