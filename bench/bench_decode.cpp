// bench_decode: decode attention per layer over the packed KIVI cache (kernels/cuda/) at
// Qwen2.5-7B shapes (28 query / 4 KV heads, head_dim 128), against our own fp16 kernel and torch
// SDPA FP16 in the same run (bench/decode_bench.h; `kvcal bench decode` runs the same routines
// on preset files). bench/sdpa_baseline.py prints the SDPA rows from Python as a cross-check.
//
//   bench_decode [--reps 50] [--batch 1,8] [--len 4096,32768] [--heads 28] [--kv 4]
//
// Methods: fp16 (ours: K/V fp16, RoPE applied to keys in the kernel), kivi-2 and kivi-4
// (presets/templates: K per-channel, V per-token, group 32, asymmetric, fp16 residual 128), each
// with fp32 and half_dequant (fp16 arithmetic) dequantization, then the pipelined and the
// register-direct (decode_attention_params::register_direct) kernels; V PCA latents (rank 32,
// int8, a synthetic basis) with K fp16 and with K kivi-2; K and V latents (the K latent mode,
// register-direct: rank 16 fp16 as ae-16, rank 32 int8).
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

#include "bench/decode_bench.h"

using namespace kvcal;

namespace {

std::vector<int> parse_list(const char* s) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(std::atoi(item.c_str()));
  return v;
}

}  // namespace

int main(int argc, char** argv) try {
  decode_shape s;
  std::vector<int> batches{1, 8}, lens{4096, 32768};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--reps")
      s.reps = std::atoi(argv[i + 1]);
    else if (a == "--batch")
      batches = parse_list(argv[i + 1]);
    else if (a == "--len")
      lens = parse_list(argv[i + 1]);
    else if (a == "--heads")
      s.n_heads = std::atoi(argv[i + 1]);
    else if (a == "--kv")
      s.n_kv = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "bench_decode: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  std::printf("decode attention per layer, %d q / %d kv heads, d %d, median of %d, L2 flushed\n\n",
              s.n_heads, s.n_kv, s.head_dim, s.reps);
  std::printf("%s", decode_table_header().c_str());
  for (int B : batches)
    for (int L : lens) {
      s.batch = B;
      s.len = L;
      const decode_timing sdpa = time_sdpa_fp16(s);
      double base_us = 0;
      for (const decode_case& c : builtin_decode_cases()) {
        const decode_timing t = time_decode_case(c, s);
        if (c.bits == 16 && !c.half_dequant) base_us = t.us;
        std::printf("%s", decode_table_row(c.name, s, t, base_us, sdpa.us).c_str());
        std::fflush(stdout);
      }
      std::printf("%s", decode_table_row("torch SDPA fp16", s, sdpa, base_us, sdpa.us).c_str());
    }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_decode: %s\n", e.what());
  return 1;
}
