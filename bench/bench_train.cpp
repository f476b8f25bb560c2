// bench_train: training throughput of train-ae / train-policy (issue 7) on a synthetic capture of
// a given model shape (default Qwen2.5-7B: 28 layers, 4 KV / 28 query heads, head_dim 128,
// hidden 3584), written with the capture writer (float16, shuffle + deflate like kvcal capture;
// content: bench/synthetic_capture.h).
// Prints a markdown table of tokens/s per command and device (figures: docs/BENCHMARKS.md).
//
//   bench_train [--tokens 32768] [--policy-tokens 8192] [--seq-len 2048] [--layers 28] [--kv 4]
//               [--heads 28] [--d 128] [--hidden 3584] [--devices cpu,cuda] [--dir /tmp]
//               [--epochs 1] [--batch 4096]
#include <ATen/ATen.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "bench/synthetic_capture.h"
#include "kernels/common/log.h"
#include "train/ae_train.h"
#include "train/policy_train.h"

using namespace kvcal;

namespace {

struct options {
  std::int64_t tokens = 32768, policy_tokens = 8192, seq_len = 2048, layers = 28, kv = 4,
               heads = 28, d = 128, hidden = 3584, epochs = 1, batch = 4096;
  std::string devices = "cpu,cuda", dir = "/tmp";
};

// A synthetic capture of `tokens` rows recording `record` (bench/synthetic_capture.h).
void make_capture(const options& o, const std::string& path, std::int64_t tokens,
                  const std::vector<capture_item>& record) {
  bench::synthetic_capture_params p;
  p.tokens = tokens;
  p.seq_len = o.seq_len;
  p.layers = o.layers;
  p.kv = o.kv;
  p.heads = o.heads;
  p.d = o.d;
  p.hidden = o.hidden;
  p.record = record;
  p.command_line = "bench_train";
  bench::write_synthetic_capture(path, p);
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    auto num = [&] { return std::stoll(v); };
    if (k == "--tokens")
      o.tokens = num();
    else if (k == "--policy-tokens")
      o.policy_tokens = num();
    else if (k == "--seq-len")
      o.seq_len = num();
    else if (k == "--layers")
      o.layers = num();
    else if (k == "--kv")
      o.kv = num();
    else if (k == "--heads")
      o.heads = num();
    else if (k == "--d")
      o.d = num();
    else if (k == "--hidden")
      o.hidden = num();
    else if (k == "--epochs")
      o.epochs = num();
    else if (k == "--batch")
      o.batch = num();
    else if (k == "--devices")
      o.devices = v;
    else if (k == "--dir")
      o.dir = v;
    else {
      std::cerr << "bench_train: unknown option " << k << "\n";
      return 2;
    }
  }
  try {
    set_log_level(log_level::warn);
    const std::string cap_ae = o.dir + "/bench_train_kv.h5",
                      cap_pol = o.dir + "/bench_train_pol.h5";
    make_capture(o, cap_ae, o.tokens, {capture_item::k, capture_item::v});
    make_capture(o, cap_pol, o.policy_tokens,
                 {capture_item::k, capture_item::hidden, capture_item::attn});
    std::cout << "synthetic capture: " << o.layers << " layers x " << o.kv << " KV heads x d "
              << o.d << ", hidden " << o.hidden << "; " << o.tokens << " tokens (AE), "
              << o.policy_tokens << " tokens (policy), seq_len " << o.seq_len << "\n\n";
    std::cout << "| command | options | device | tok/s | s |\n|---|---|---|---|---|\n";
    std::stringstream devs(o.devices);
    std::string dev;
    while (std::getline(devs, dev, ',')) {
      for (const char* arch : {"linear", "mlp"}) {
        ae_train_params p;
        p.captures = {cap_ae};
        p.out = o.dir + "/bench_train_ae.safetensors";
        p.latent = static_cast<int>(o.d / 4);
        p.arch = arch;
        p.epochs = static_cast<int>(o.epochs);
        p.batch = o.batch;
        p.patience = 0;
        p.device = dev;
        p.show_progress = false;
        p.write_report = false;
        const ae_train_result r = run_train_ae(p);
        std::cout << "| train-ae | " << arch << ", latent " << p.latent << ", recon, batch "
                  << p.batch << " | " << r.device_used << " | "
                  << static_cast<long>(r.samples_per_s) << " | " << r.seconds << " |\n";
      }
      for (const char* recipe : {"future-attn", "h2o-label"}) {
        policy_train_params p;
        p.captures = {cap_pol};
        p.out = o.dir + "/bench_train_policy.safetensors";
        p.recipe = recipe;
        p.epochs = static_cast<int>(o.epochs);
        p.batch = o.batch;
        p.patience = 0;
        p.device = dev;
        p.show_progress = false;
        p.write_report = false;
        const policy_train_result r = run_train_policy(p);
        std::cout << "| train-policy | " << recipe << ", batch " << p.batch << " | "
                  << r.device_used << " | " << static_cast<long>(r.samples_per_s) << " | "
                  << r.seconds << " |\n";
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "bench_train: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
