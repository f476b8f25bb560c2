// Synthetic kvcal captures of a given model shape for benchmarks (bench_train, fit-pca end to
// end), written with calibrate's capture_writer, so the file is exactly what `kvcal capture`
// writes (format "kvcal.capture" v1, docs/formats/capture.md), with random content:
//   K / V / k_rope / q: per sequence z ~ N(0, 1) [kv, n, d], x = z M_l^T with M_l a random mixing
//     times a decaying spectrum 4 * decay_l^j (decay 0.90..0.96 by layer), so PCA has structure;
//   hidden: N(0, 1); attention statistics: exp(N(0, 1)).
// The file appears atomically (path.partial, then rename).
//
//   kvcal::bench::synthetic_capture_params p;
//   p.tokens = 1 << 20; p.record = {kvcal::capture_item::k};
//   kvcal::bench::write_synthetic_capture("/tmp/cap.h5", p);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "calibrate/capture_format.h"

namespace kvcal::bench {

struct synthetic_capture_params {
  std::int64_t tokens = 32768, seq_len = 2048;
  // Default: the Qwen2.5-7B shape.
  std::int64_t layers = 28, kv = 4, heads = 28, d = 128, hidden = 3584;
  std::vector<capture_item> record = {capture_item::k, capture_item::v};
  std::string dtype = "float16";  // float16 | float32
  bool compress = true;           // shuffle + deflate 1, as kvcal capture writes by default
  std::uint64_t seed = 0;
  std::string command_line = "bench";
};

// Returns the file's size in bytes.
std::int64_t write_synthetic_capture(const std::string& path, const synthetic_capture_params& p);

}  // namespace kvcal::bench
