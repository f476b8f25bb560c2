#include "bench/synthetic_capture.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>

#include "calibrate/capture_writer.h"
#include "kernels/common/error.h"

namespace kvcal::bench {

namespace {

// Row-major [n, ...] tensor in the capture's element type (fp16 is written as its bits).
at::Tensor stored(const at::Tensor& t, const std::string& dtype) {
  return t.to(dtype == "float16" ? at::kHalf : at::kFloat).contiguous();
}

}  // namespace

std::int64_t write_synthetic_capture(const std::string& path, const synthetic_capture_params& p) {
  KVCAL_CHECK(p.tokens > 0 && p.seq_len > 0 && p.layers > 0 && p.kv > 0 && p.d > 0,
              "synthetic capture: sizes must be positive");
  KVCAL_CHECK(p.dtype == "float16" || p.dtype == "float32", "synthetic capture: dtype '", p.dtype,
              "' is not float16 or float32");
  capture_header h;
  h.model_json = "{\"model_type\":\"qwen2\",\"n_layers\":" + std::to_string(p.layers) +
                 ",\"n_kv_heads\":" + std::to_string(p.kv) +
                 ",\"head_dim\":" + std::to_string(p.d) +
                 ",\"rope\":{\"theta\":1000000.0,\"type\":\"default\"},\"config_sha256\":\"0\"}";
  h.tokenizer_sha256 = "0";
  h.inputs_json = "[]";
  h.seq_len = p.seq_len;
  h.n_layers = p.layers;
  h.n_kv_heads = p.kv;
  h.n_heads = p.heads;
  h.head_dim = p.d;
  h.hidden_size = p.hidden;
  h.dtype = p.dtype;
  h.record = p.record;
  for (std::int64_t l = 0; l < p.layers; ++l) h.layers.push_back(static_cast<int>(l));
  h.attn_window = 64;
  h.compress = p.compress;
  h.options_json = "{\"synthetic\":true,\"seed\":" + std::to_string(p.seed) + "}";
  h.kvcal_version = "bench";
  h.command_line = p.command_line;
  at::manual_seed(p.seed);
  // Mixing per (layer, item): [layers, 4 items, kv, d, d], the spectrum folded in by columns.
  at::Tensor mix = at::randn({p.layers, 4, p.kv, p.d, p.d}) / std::sqrt(static_cast<double>(p.d));
  const at::Tensor j = at::arange(p.d).to(at::kFloat);
  for (std::int64_t l = 0; l < p.layers; ++l) {
    const double decay = 0.90 + 0.06 * static_cast<double>(l % 5) / 4.0;
    mix[l].mul_(at::pow(at::full({p.d}, decay), j) * 4);  // scales column j of each [d, d]
  }
  const std::string partial = path + ".partial";
  std::remove(partial.c_str());
  {
    auto w = capture_writer::create(partial, h);
    std::vector<std::int32_t> ids, seq, pos;
    for (std::int64_t t0 = 0, s = 0; t0 < p.tokens; t0 += p.seq_len, ++s) {
      const std::int64_t n = std::min(p.seq_len, p.tokens - t0);
      ids.resize(static_cast<size_t>(n));
      seq.assign(static_cast<size_t>(n), static_cast<std::int32_t>(s));
      pos.resize(static_cast<size_t>(n));
      for (std::int64_t i = 0; i < n; ++i) {
        ids[i] = static_cast<std::int32_t>((t0 + i) % 1000);
        pos[i] = static_cast<std::int32_t>(i);
      }
      w.write(capture_ids_path, ids.data(), n);
      w.write(capture_seq_path, seq.data(), n);
      w.write(capture_pos_path, pos.data(), n);
      // One draw per sequence, mixed differently per layer and item: the draw is the slow part.
      const at::Tensor z = at::randn({p.kv, n, p.d});  // [kv, n, d]
      for (std::int64_t l = 0; l < p.layers; ++l)
        for (const capture_item it : p.record) {
          const int li = static_cast<int>(l);
          switch (it) {
            case capture_item::k:
            case capture_item::v:
            case capture_item::k_rope: {
              const int m = it == capture_item::k ? 0 : it == capture_item::v ? 1 : 2;
              const at::Tensor x = at::bmm(z, mix[l][m].transpose(1, 2));  // [kv, n, d]
              w.write(capture_layer_path(li, capture_item_name(it)),
                      stored(x.permute({1, 0, 2}), p.dtype).data_ptr(), n);  // [n, kv, d]
              break;
            }
            case capture_item::q: {
              const std::int64_t g = p.heads / p.kv;
              const at::Tensor x = at::bmm(z, mix[l][3].transpose(1, 2));  // [kv, n, d]
              w.write(capture_layer_path(li, "q"),
                      stored(x.permute({1, 0, 2}).repeat_interleave(g, 1), p.dtype).data_ptr(), n);
              break;
            }
            case capture_item::hidden:
              w.write(capture_layer_path(li, "hidden"),
                      stored(at::randn({n, p.hidden}), p.dtype).data_ptr(), n);
              break;
            case capture_item::attn:
              for (const char* name : {"attn_cum", "attn_next", "attn_max"}) {
                const at::Tensor a = at::exp(at::randn({n, p.kv})).contiguous();
                w.write(capture_layer_path(li, name), a.data_ptr<float>(), n);
              }
              break;
          }
        }
      w.commit(n, 1);
    }
    w.finish();
  }
  KVCAL_CHECK(std::rename(partial.c_str(), path.c_str()) == 0, "cannot rename ", partial, " to ",
              path);
  std::FILE* f = std::fopen(path.c_str(), "rb");
  KVCAL_CHECK(f != nullptr, "cannot open ", path);
  std::fseek(f, 0, SEEK_END);
  const long bytes = std::ftell(f);
  std::fclose(f);
  return bytes;
}

}  // namespace kvcal::bench
