// kernels/cpu: bit packing, grouped quantization (per-token / per-channel), dense attention
// reference — round trips over awkward lengths and the scale / 2 error bound.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/common/half.h"
#include "kernels/cpu/attention_ref.h"
#include "kernels/cpu/bitpack.h"
#include "kernels/cpu/quantize.h"
#include "kernels/cpu/rope.h"

using namespace kvcal;

TEST_CASE("bitpack round-trips every bit width over awkward lengths") {
  std::mt19937 rng(7);
  for (int bits = 1; bits <= 8; ++bits) {
    for (std::size_t n : {1u, 2u, 7u, 8u, 17u, 97u, 4099u}) {
      CAPTURE(bits);
      CAPTURE(n);
      std::vector<std::uint8_t> codes(n), back(n);
      for (auto& c : codes) c = static_cast<std::uint8_t>(rng() & ((1u << bits) - 1u));
      // Sentinel byte after the buffer: packing must not write past packed_bytes.
      std::vector<std::uint8_t> buf(packed_bytes(n, bits) + 1, 0xA5);
      pack_bits(codes.data(), n, bits, buf.data());
      CHECK(buf.back() == 0xA5);
      CHECK(buf.size() - 1 == (n * static_cast<std::size_t>(bits) + 7) / 8);
      unpack_bits(buf.data(), 0, n, bits, back.data());
      CHECK(codes == back);
      // Random access from an offset.
      const std::size_t first = n / 3, m = n - first;
      std::vector<std::uint8_t> part(m);
      unpack_bits(buf.data(), first, m, bits, part.data());
      CHECK(std::equal(part.begin(), part.end(), codes.begin() + static_cast<long>(first)));
      for (std::size_t i = 0; i < n; i += 13) CHECK(get_bits(buf.data(), i, bits) == codes[i]);
    }
  }
}

TEST_CASE("3-bit codes pack 8 to 3 bytes, LSB first") {
  const std::uint8_t codes[8] = {1, 2, 3, 4, 5, 6, 7, 0};
  std::uint8_t buf[3];
  pack_bits(codes, 8, 3, buf);
  // bits: 001 010 011 100 101 110 111 000, code 0 in the lowest bits of byte 0.
  std::uint32_t word = buf[0] | (buf[1] << 8) | (buf[2] << 16);
  for (int i = 0; i < 8; ++i) CHECK(((word >> (3 * i)) & 7u) == codes[i]);
  CHECK(packed_bytes(128, 3) == 48);
  CHECK(packed_bytes(10, 3) == 4);
}

TEST_CASE("fp16 directed rounding brackets the value") {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 10.0f);
  for (int i = 0; i < 20000; ++i) {
    float x = nd(rng) * (i % 7 == 0 ? 1e-5f : 1.0f);
    CHECK(fp16_to_float(fp16_round_down(x)) <= x);
    CHECK(fp16_to_float(fp16_round_up(x)) >= x);
  }
  CHECK(fp16_to_float(fp16_round_down(1.0f)) == 1.0f);
  CHECK(fp16_to_float(fp16_round_up(-0.0f)) == 0.0f);
}

namespace {

// Max |x - x'| / (scale / 2) over one group; <= 1 is the bound.
void check_group_bound(const std::vector<float>& x, int bits, bool sym) {
  const std::size_t n = x.size();
  std::vector<std::uint8_t> packed(packed_bytes(n, bits), 0);
  std::uint16_t s = 0, z = 0;
  quantize_group(x.data(), n, 1, bits, sym, packed.data(), 0, 1, &s, &z);
  const float scale = fp16_to_float(s), zero = fp16_to_float(z);
  for (std::size_t i = 0; i < n; ++i) {
    const float r = dequantize_code(get_bits(packed.data(), i, bits), scale, zero, bits, sym);
    // scale / 2 plus float rounding of the dequantization itself.
    const float bound = scale * 0.5f * (1 + 1e-5f) + 1e-6f * std::fabs(x[i]) + 1e-30f;
    REQUIRE_MESSAGE(std::fabs(x[i] - r) <= bound, "bits ", bits, " sym ", sym, " i ", i, " x ",
                    x[i], " r ", r, " scale ", scale);
  }
}

}  // namespace

TEST_CASE("quantization error within scale / 2 for every bit width, asym and sym") {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(-3.0f, 7.0f);
  for (int bits : {2, 3, 4, 8}) {
    for (bool sym : {false, true}) {
      for (std::size_t n : {1u, 17u, 32u, 97u, 128u}) {
        std::vector<float> x(n);
        for (auto& v : x) v = nd(rng) * 3.0f;
        check_group_bound(x, bits, sym);
        for (auto& v : x) v = ud(rng);
        check_group_bound(x, bits, sym);
        for (auto& v : x) v = 100.0f + 1e-3f * nd(rng);  // narrow range far from 0
        check_group_bound(x, bits, sym);
        std::fill(x.begin(), x.end(), 0.3f);  // constant group
        check_group_bound(x, bits, sym);
      }
    }
  }
}

TEST_CASE("asymmetric error shrinks with bits: 8-bit is ~1/85 of 2-bit's scale") {
  std::vector<float> x(64);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i)) * 2;
  float prev = 1e30f;
  for (int bits : {2, 3, 4, 8}) {
    std::vector<std::uint8_t> p(packed_bytes(64, bits), 0);
    std::uint16_t s, z;
    quantize_group(x.data(), 64, 1, bits, false, p.data(), 0, 1, &s, &z);
    const float scale = fp16_to_float(s);
    CHECK(scale < prev);
    CHECK(scale <= 4.0f / static_cast<float>((1 << bits) - 1) * 1.01f);
    prev = scale;
  }
}

TEST_CASE("per-channel isolates an outlier channel, per-token does not") {
  // [G = 32 tokens, d = 64]: channel 5 is 100x larger than the rest (KIVI's observation on K).
  const int d = 64;
  quant_spec spec{4, 32, false};
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(spec.group * d));
  for (int j = 0; j < spec.group; ++j)
    for (int c = 0; c < d; ++c)
      x[static_cast<std::size_t>(j * d + c)] = nd(rng) * (c == 5 ? 100.0f : 1.0f);

  // Per-channel: one block of 32 tokens.
  std::vector<std::uint8_t> codes(
      packed_bytes(static_cast<std::size_t>(spec.group * d), spec.bits));
  std::vector<std::uint16_t> sc(d), zc(d);
  quantize_per_channel(x.data(), d, spec, codes.data(), sc.data(), zc.data());
  std::vector<float> rc(x.size());
  dequantize_per_channel(codes.data(), sc.data(), zc.data(), d, spec, rc.data());

  // Per-token: each token row on its own, groups of 32 channels.
  std::vector<float> rt(x.size());
  double err_c = 0, err_t = 0;
  for (int j = 0; j < spec.group; ++j) {
    std::vector<std::uint8_t> ct(packed_bytes(d, spec.bits));
    std::uint16_t s[2], z[2];
    const float* row = &x[static_cast<std::size_t>(j * d)];
    quantize_per_token(row, d, spec, ct.data(), s, z);
    dequantize_per_token(ct.data(), s, z, d, spec, &rt[static_cast<std::size_t>(j * d)]);
    for (int c = 0; c < d; ++c) {
      const std::size_t i = static_cast<std::size_t>(j * d + c);
      // Each layout within its own bound.
      CHECK(std::fabs(x[i] - rc[i]) <=
            fp16_to_float(sc[static_cast<std::size_t>(c)]) * 0.5001f + 1e-6f);
      CHECK(std::fabs(x[i] - rt[i]) <= fp16_to_float(s[c / 32]) * 0.5001f + 1e-6f);
      if (c != 5 && c < 32) {  // the channels sharing a per-token group with the outlier
        err_c += std::fabs(x[i] - rc[i]);
        err_t += std::fabs(x[i] - rt[i]);
      }
    }
  }
  // The ordinary channels lose far more precision per-token (the outlier stretches the range).
  CHECK(err_t > 10 * err_c);
}

TEST_CASE("per-token symmetric layout stores no zeros and round-trips within bound") {
  const int d = 96;
  for (int bits : {3, 4, 8}) {
    quant_spec spec{bits, 32, true};
    std::vector<float> x(d), r(d);
    for (int c = 0; c < d; ++c)
      x[static_cast<std::size_t>(c)] = std::cos(0.1f * static_cast<float>(c * c));
    std::vector<std::uint8_t> codes(packed_bytes(d, bits));
    std::uint16_t s[3];
    quantize_per_token(x.data(), d, spec, codes.data(), s, nullptr);
    dequantize_per_token(codes.data(), s, nullptr, d, spec, r.data());
    for (int c = 0; c < d; ++c)
      CHECK(std::fabs(x[static_cast<std::size_t>(c)] - r[static_cast<std::size_t>(c)]) <=
            fp16_to_float(s[c / 32]) * 0.5001f);
  }
}

TEST_CASE("RoPE rotation keeps the norm and is the identity at position 0") {
  const int d = 16;
  std::vector<float> inv(d / 2), cs(d / 2), sn(d / 2), x(d), y;
  for (int i = 0; i < d / 2; ++i)
    inv[static_cast<std::size_t>(i)] = std::pow(10000.0f, -2.0f * i / d);
  for (int i = 0; i < d; ++i) x[static_cast<std::size_t>(i)] = 0.5f - 0.1f * static_cast<float>(i);
  rope_cos_sin(0, inv.data(), d, 1.0f, cs.data(), sn.data());
  y = x;
  apply_rope(y.data(), d, cs.data(), sn.data());
  CHECK(y == x);
  rope_cos_sin(1234, inv.data(), d, 1.0f, cs.data(), sn.data());
  apply_rope(y.data(), d, cs.data(), sn.data());
  double n0 = 0, n1 = 0;
  for (int i = 0; i < d; ++i) {
    n0 += x[static_cast<std::size_t>(i)] * x[static_cast<std::size_t>(i)];
    n1 += y[static_cast<std::size_t>(i)] * y[static_cast<std::size_t>(i)];
  }
  CHECK(n1 == doctest::Approx(n0).epsilon(1e-5));
}

TEST_CASE("dense attention reference: one key gives its value; causal mask; GQA") {
  const int d = 4;
  // 2 query heads, 1 KV head, 2 keys at positions 0, 1; query at position 0 sees key 0 only.
  std::vector<float> q = {1, 0, 0, 0, 0, 1, 0, 0};
  std::vector<float> k = {1, 0, 0, 0, 0, 1, 0, 0};
  std::vector<float> v = {1, 2, 3, 4, 5, 6, 7, 8};
  std::int64_t qp[1] = {0}, kp[2] = {0, 1};
  std::vector<float> out(8);
  attention_dense_ref(q.data(), k.data(), v.data(), qp, kp, 2, 1, 1, 2, d, out.data());
  for (int c = 0; c < 4; ++c) {
    CHECK(out[static_cast<std::size_t>(c)] == doctest::Approx(v[static_cast<std::size_t>(c)]));
    CHECK(out[static_cast<std::size_t>(4 + c)] == doctest::Approx(v[static_cast<std::size_t>(c)]));
  }
  qp[0] = 1;  // sees both: head 0 weights key 0 by e^(1/2) vs 1
  attention_dense_ref(q.data(), k.data(), v.data(), qp, kp, 2, 1, 1, 2, d, out.data());
  const double w = std::exp(0.5) / (std::exp(0.5) + 1);
  CHECK(out[0] == doctest::Approx(w * 1 + (1 - w) * 5));
  CHECK(out[4] == doctest::Approx((1 - w) * 1 + w * 5));
}
