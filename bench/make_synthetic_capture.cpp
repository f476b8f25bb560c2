// make_synthetic_capture: a synthetic capture of a model shape (default Qwen2.5-7B: 28 layers,
// 4 KV heads, head_dim 128, fp16) for end-to-end timing of `kvcal fit-pca` (issue #6); content
// and format: bench/synthetic_capture.h. Prints the file size and the write rate.
//
//   make_synthetic_capture --out FILE --tokens N [--target k | k,v | ...] [--layers 28] [--kv 4]
//                          [--heads 28] [--d 128] [--seq-len 4096] [--dtype float16]
//                          [--compress off|on] [--seed 0]
// 1M tokens of K + V at the 7B shape are 57 GB (28 x 4 x 128 x 2 x 2 bytes per token); K alone
// is 28.7 GB. --compress defaults to off: deflate runs at tens of MB/s on random data.
#include <chrono>
#include <cstdio>
#include <sstream>
#include <string>

#include "bench/synthetic_capture.h"
#include "kernels/common/error.h"

using namespace kvcal;

int main(int argc, char** argv) {
  bench::synthetic_capture_params p;
  p.seq_len = 4096;
  p.compress = false;
  p.command_line = "make_synthetic_capture";
  std::string out;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string k = argv[i];
      KVCAL_CHECK(i + 1 < argc, "make_synthetic_capture: ", k, " needs a value");
      const std::string v = argv[++i];
      if (k == "--out") {
        out = v;
      } else if (k == "--tokens") {
        p.tokens = std::stoll(v);
      } else if (k == "--layers") {
        p.layers = std::stoll(v);
      } else if (k == "--kv") {
        p.kv = std::stoll(v);
      } else if (k == "--heads") {
        p.heads = std::stoll(v);
      } else if (k == "--d") {
        p.d = std::stoll(v);
      } else if (k == "--seq-len") {
        p.seq_len = std::stoll(v);
      } else if (k == "--dtype") {
        p.dtype = v;
      } else if (k == "--seed") {
        p.seed = std::stoull(v);
      } else if (k == "--compress") {
        KVCAL_CHECK(v == "on" || v == "off", "--compress: '", v, "' is not on or off");
        p.compress = v == "on";
      } else if (k == "--target") {
        p.record.clear();
        std::stringstream ss(v);
        std::string t;
        while (std::getline(ss, t, ',')) {
          const auto it = parse_capture_item(t);
          KVCAL_CHECK(it.has_value(), "--target: '", t, "' is not a capture item");
          p.record.push_back(*it);
        }
        KVCAL_CHECK(!p.record.empty(), "--target is empty");
      } else {
        KVCAL_FAIL("make_synthetic_capture: unknown option ", k);
      }
    }
    KVCAL_CHECK(!out.empty(), "make_synthetic_capture: --out FILE is required");
    const auto t0 = std::chrono::steady_clock::now();
    const std::int64_t bytes = bench::write_synthetic_capture(out, p);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf(
        "%s: %lld tokens, %lld layers x %lld KV heads x %lld, %.2f GB in %.1f s (%.2f GB/s)\n",
        out.c_str(), static_cast<long long>(p.tokens), static_cast<long long>(p.layers),
        static_cast<long long>(p.kv), static_cast<long long>(p.d), bytes / 1e9, s, bytes / 1e9 / s);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_synthetic_capture: %s\n", e.what());
    return 1;
  }
  return 0;
}
