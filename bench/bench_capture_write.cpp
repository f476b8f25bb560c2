// bench_capture_write: the write path of `kvcal capture` alone (issue 5), without the model:
// K and V of every layer for `tokens` tokens, appended one sequence at a time and flushed after
// each (as capture commits), float16 rows of a given model shape (default Qwen2.5-7B: 28 layers,
// 4 KV heads, head_dim 128, chunks of capture_chunk_rows). Each configuration writes a fresh file:
//   hdf5    every row block through H5Dwrite (HDF5's hyperslab path and filter pipeline; kvcal
//           before direct chunk writes)
//   direct  h5_write_blocks: whole chunks through H5Dwrite_chunk, shuffle + deflate by kvcal on
//           `threads` threads
// with compression off and on (shuffle + deflate 1). Prints a markdown table: seconds, input MB/s
// (uncompressed bytes), file MB/s and tokens/s. The data are Gaussian with per-channel scales
// (deflate ratio near real activations'); the same batch is written every time. Page-cache
// writes: no fsync, like the capture loop (its final fsync is outside the loop).
//
//   bench_capture_write [--dir /tmp] [--tokens 16384] [--seq-len 4096] [--layers 28] [--kv 4]
//                       [--d 128] [--threads 1,auto]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "calibrate/capture_writer.h"
#include "calibrate/h5.h"
#include "calibrate/h5_chunk_writer.h"
#include "calibrate/h5_dataset.h"
#include "kernels/common/error.h"
#include "kernels/common/half.h"

using namespace kvcal;

namespace {

struct options {
  std::int64_t tokens = 16384, seq_len = 4096, layers = 28, kv = 4, d = 128;
  std::string dir = "/tmp", threads = "1,auto";
};

struct result {
  double seconds = 0;
  std::int64_t file_bytes = 0;
};

// Writes one file; threads 0 = the hdf5 path.
result run(const options& o, bool compress, int threads,
           const std::vector<std::vector<std::uint16_t>>& batch) {
  const std::string path = o.dir + "/bench_capture_write.h5";
  std::remove(path.c_str());
  const auto t0 = std::chrono::steady_clock::now();
  result r;
  {
    h5_file f = h5_file::create_append(path);
    h5_dataset_options opt;
    opt.compress = compress;
    opt.chunk_rows = capture_chunk_rows(o.seq_len, o.kv * o.d * 2);
    std::vector<h5_dataset> ds;
    for (std::int64_t l = 0; l < o.layers; ++l)
      for (const char* name : {"k", "v"}) {
        ds.push_back(h5_dataset::create(f.id(), "/layers/" + std::to_string(l) + "/" + name,
                                        h5_elem::f16, {o.kv, o.d}, opt, path));
        ds.back().set_direct_writes(threads > 0);
      }
    for (std::int64_t row0 = 0; row0 < o.tokens; row0 += o.seq_len) {
      const std::int64_t n = std::min(o.seq_len, o.tokens - row0);
      if (threads > 0) {
        std::vector<h5_row_block> blocks;
        for (std::size_t i = 0; i < ds.size(); ++i)
          blocks.push_back({&ds[i], row0, n, batch[i % batch.size()].data()});
        h5_write_blocks(blocks, threads);
      } else {
        for (std::size_t i = 0; i < ds.size(); ++i)
          ds[i].write_rows(row0, n, batch[i % batch.size()].data());
      }
      f.flush();
    }
    r.file_bytes = f.file_size();
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::remove(path.c_str());
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    options o;
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string k = argv[i], v = argv[i + 1];
      if (k == "--dir")
        o.dir = v;
      else if (k == "--tokens")
        o.tokens = std::stoll(v);
      else if (k == "--seq-len")
        o.seq_len = std::stoll(v);
      else if (k == "--layers")
        o.layers = std::stoll(v);
      else if (k == "--kv")
        o.kv = std::stoll(v);
      else if (k == "--d")
        o.d = std::stoll(v);
      else if (k == "--threads")
        o.threads = v;
      else
        KVCAL_FAIL("bench_capture_write: unknown option ", k);
    }
    KVCAL_CHECK(argc % 2 == 1, "bench_capture_write: options come in pairs (--name value)");
    KVCAL_CHECK(o.tokens >= 1 && o.seq_len >= 1 && o.layers >= 1 && o.kv >= 1 && o.d >= 1,
                "bench_capture_write: sizes must be >= 1");
    std::vector<int> threads = {0};
    std::stringstream ss(o.threads);
    for (std::string t; std::getline(ss, t, ',');)
      threads.push_back(t == "auto" ? h5_default_write_threads() : std::stoi(t));

    // Two distinct batches (K-like, V-like): [seq_len, kv, d] float16, per-channel scales.
    std::mt19937 rng(5);
    std::normal_distribution<float> g(0.0f, 1.0f);
    std::vector<std::vector<std::uint16_t>> batch(2);
    for (auto& b : batch) {
      std::vector<float> scale(static_cast<std::size_t>(o.kv * o.d));
      for (auto& s : scale) s = std::exp(1.5f * g(rng));
      b.resize(static_cast<std::size_t>(o.seq_len * o.kv * o.d));
      for (std::size_t i = 0; i < b.size(); ++i)
        b[i] = float_to_fp16(scale[i % scale.size()] * g(rng));
    }
    const double in_mb = static_cast<double>(o.tokens * o.layers * 2 * o.kv * o.d * 2) / 1e6;
    std::printf(
        "bench_capture_write: %lld tokens, %lld layers x {k, v} [%lld, %lld] float16, "
        "seq %lld, %.0f MB in, dir %s\n\n",
        static_cast<long long>(o.tokens), static_cast<long long>(o.layers),
        static_cast<long long>(o.kv), static_cast<long long>(o.d),
        static_cast<long long>(o.seq_len), in_mb, o.dir.c_str());
    std::printf(
        "| path | compress | threads | seconds | input MB/s | file MB | file MB/s | tok/s |\n");
    std::printf("|---|---|---|---|---|---|---|---|\n");
    for (bool compress : {false, true})
      for (int t : threads) {
        if (!compress && t != 0 && t != threads[1]) continue;  // no encoding: threads unused
        const result r = run(o, compress, t, batch);
        std::printf("| %s | %s | %s | %.2f | %.0f | %.0f | %.0f | %.0f |\n", t ? "direct" : "hdf5",
                    compress ? "on" : "off", t ? std::to_string(t).c_str() : "-", r.seconds,
                    in_mb / r.seconds, r.file_bytes / 1e6, r.file_bytes / 1e6 / r.seconds,
                    static_cast<double>(o.tokens) / r.seconds);
        std::fflush(stdout);
      }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_capture_write: %s\n", e.what());
    return 1;
  }
}
