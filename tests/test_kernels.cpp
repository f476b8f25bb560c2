// kernels/common: errors, logging/progress formatting, fp16/bf16 conversions, CUDA CPU path.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "kernels/common/cuda_device.h"
#include "kernels/common/error.h"
#include "kernels/common/half.h"
#include "kernels/common/progress.h"

using namespace kvcal;

TEST_CASE("KVCAL_CHECK throws kvcal::error with message and location") {
  int n = 3;
  try {
    KVCAL_CHECK(n == 4, "file.bin", ": expected 4, got ", n);
    FAIL("no throw");
  } catch (const kvcal::error& e) {
    CHECK(std::string(e.what()) == "file.bin: expected 4, got 3");
    CHECK(e.where().find("test_kernels.cpp:") != std::string::npos);
  }
  CHECK_NOTHROW(KVCAL_CHECK(n == 3, "unused"));
}

TEST_CASE("fp16 decode matches the compiler's _Float16 for every bit pattern") {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    _Float16 ref;
    std::uint16_t bits = static_cast<std::uint16_t>(h);
    std::memcpy(&ref, &bits, 2);
    float want = static_cast<float>(ref);
    float got = fp16_to_float(bits);
    if (std::isnan(want)) {
      CHECK(std::isnan(got));
    } else {
      std::uint32_t a, b;
      std::memcpy(&a, &want, 4);
      std::memcpy(&b, &got, 4);
      REQUIRE_MESSAGE(a == b, "fp16 bits ", h);
    }
  }
}

TEST_CASE("fp16 encode rounds like the compiler's _Float16 (normal, subnormal, overflow, ties)") {
  std::mt19937 rng(123);
  std::uniform_int_distribution<std::uint32_t> any;
  std::vector<float> values = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 1e-8f, 2.9802322e-8f,
                               5.9604645e-8f, 6.1035156e-5f, 1.0f + 1.0f / 2048.0f, INFINITY};
  for (int i = 0; i < 200000; ++i) {
    std::uint32_t u = any(rng);
    // Concentrate on the fp16 exponent range, keep some arbitrary floats.
    if (i % 4 != 0) u = (u & 0x807fffffu) | ((100u + (u >> 23) % 50u) << 23);
    float f;
    std::memcpy(&f, &u, 4);
    values.push_back(f);
  }
  for (float f : values) {
    if (std::isnan(f)) continue;
    _Float16 ref = static_cast<_Float16>(f);
    std::uint16_t want;
    std::memcpy(&want, &ref, 2);
    REQUIRE_MESSAGE(float_to_fp16(f) == want, "value ", f);
  }
  CHECK(std::isnan(fp16_to_float(float_to_fp16(NAN))));
}

TEST_CASE("bf16 round trip and rounding") {
  CHECK(bf16_to_float(float_to_bf16(1.0f)) == 1.0f);
  CHECK(bf16_to_float(float_to_bf16(-3.5f)) == -3.5f);
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even -> 1.
  CHECK(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256.0f)) == 1.0f);
  CHECK(bf16_to_float(float_to_bf16(1.0f + 3.0f / 256.0f)) == 1.0f + 4.0f / 256.0f);
  CHECK(std::isnan(bf16_to_float(float_to_bf16(NAN))));
  CHECK(std::isinf(bf16_to_float(float_to_bf16(INFINITY))));
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1000.0f, 1000.0f);
  for (int i = 0; i < 10000; ++i) {
    float f = u(rng);
    float r = bf16_to_float(float_to_bf16(f));
    CHECK(std::fabs(r - f) <= std::fabs(f) * (1.0f / 256.0f));
  }
}

TEST_CASE("progress formatting") {
  CHECK(progress::format_count(999) == "999");
  CHECK(progress::format_count(1234) == "1.23k");
  CHECK(progress::format_count(45600) == "45.6k");
  CHECK(progress::format_count(3.2e6) == "3.20M");
  CHECK(progress::format_duration(5) == "5s");
  CHECK(progress::format_duration(83) == "1m23s");
  CHECK(progress::format_duration(7322) == "2h02m");
  progress::force_tty(0);
  progress p("capture", 1000, "tok");
  p.advance(250);
  std::string line = p.render(10.0, false);
  CHECK(line.find(" 25% 250/1.00k tok") != std::string::npos);
  CHECK(line.find("  25 tok/s") != std::string::npos);
  CHECK(line.find("ETA 30s") != std::string::npos);
  CHECK(p.render(10.0, true).find("in 10s") != std::string::npos);
  p.finish();
  progress::force_tty(-1);
}

TEST_CASE("CUDA queries never throw on a machine without a GPU") {
  int n = -1;
  CHECK_NOTHROW(n = cuda_device_count());
  CHECK(n >= 0);
  CHECK(!cuda_device_summary().empty());
}
