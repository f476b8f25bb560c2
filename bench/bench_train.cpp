// bench_train: training throughput of train-ae / train-policy (issue 7) on a synthetic capture of
// a given model shape (default Qwen2.5-7B: 28 layers, 4 KV / 28 query heads, head_dim 128,
// hidden 3584), written with the capture writer (float16, shuffle + deflate like kvcal capture).
// K and V are correlated Gaussians with a decaying spectrum; the attention statistics are random.
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

#include "calibrate/capture_writer.h"
#include "kernels/common/half.h"
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

std::vector<std::uint16_t> to_half(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  std::vector<std::uint16_t> out(static_cast<std::size_t>(c.numel()));
  const float* p = c.data_ptr<float>();
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = float_to_fp16(p[i]);
  return out;
}

// Writes a synthetic capture of `tokens` rows recording `record`.
void make_capture(const options& o, const std::string& path, std::int64_t tokens,
                  const std::vector<capture_item>& record) {
  capture_header h;
  h.model_json = "{\"model_type\":\"qwen2\",\"n_layers\":" + std::to_string(o.layers) +
                 ",\"n_kv_heads\":" + std::to_string(o.kv) +
                 ",\"head_dim\":" + std::to_string(o.d) +
                 ",\"rope\":{\"theta\":1000000.0,\"type\":\"default\"},\"config_sha256\":\"0\"}";
  h.tokenizer_sha256 = "0";
  h.inputs_json = "[]";
  h.seq_len = o.seq_len;
  h.n_layers = o.layers;
  h.n_kv_heads = o.kv;
  h.n_heads = o.heads;
  h.head_dim = o.d;
  h.hidden_size = o.hidden;
  h.dtype = "float16";
  h.record = record;
  for (int l = 0; l < o.layers; ++l) h.layers.push_back(l);
  h.attn_window = 64;
  h.compress = true;
  h.options_json = "{}";
  h.kvcal_version = "bench";
  h.command_line = "bench_train";
  at::manual_seed(0);
  // Per (layer, stream): a random mixing of a decaying spectrum, so PCA / AEs have structure.
  at::Tensor mix = at::randn({o.layers, 2, o.kv, o.d, o.d}) / std::sqrt(static_cast<double>(o.d));
  at::Tensor scale = at::pow(at::full({o.d}, 0.93), at::arange(o.d).to(at::kFloat)) * 4;
  auto w = capture_writer::create(path, h);
  for (std::int64_t t0 = 0; t0 < tokens; t0 += o.seq_len) {
    const std::int64_t n = std::min(o.seq_len, tokens - t0);
    std::vector<std::int32_t> ids(n), seq(n), pos(n);
    for (std::int64_t i = 0; i < n; ++i) {
      ids[i] = static_cast<std::int32_t>(i % 1000);
      seq[i] = static_cast<std::int32_t>(t0 / o.seq_len);
      pos[i] = static_cast<std::int32_t>(i);
    }
    w.write(capture_ids_path, ids.data(), n);
    w.write(capture_seq_path, seq.data(), n);
    w.write(capture_pos_path, pos.data(), n);
    for (int l = 0; l < o.layers; ++l)
      for (capture_item it : record) {
        if (it == capture_item::k || it == capture_item::v) {
          at::Tensor z = at::randn({o.kv, n, o.d}) * scale;  // [kv, n, d]
          at::Tensor x = at::bmm(z, mix[l][it == capture_item::k ? 0 : 1].transpose(1, 2));
          w.write(capture_layer_path(l, capture_item_name(it)),
                  to_half(x.permute({1, 0, 2})).data(), n);  // [n, kv, d]
        } else if (it == capture_item::hidden) {
          w.write(capture_layer_path(l, "hidden"), to_half(at::randn({n, o.hidden})).data(), n);
        } else if (it == capture_item::attn) {
          for (const char* s : {"attn_cum", "attn_next", "attn_max"}) {
            at::Tensor a = at::exp(at::randn({n, o.kv})).contiguous();
            w.write(capture_layer_path(l, s), a.data_ptr<float>(), n);
          }
        }
      }
    w.commit(n, 1);
  }
  w.finish();
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
