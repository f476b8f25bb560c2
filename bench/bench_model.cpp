// bench_model: speed of the Llama-family forward with the plain full cache on a checkpoint
// (normally bench/make_random_checkpoint.py's Qwen2.5-7B-shaped one), the figures of issue #3:
//   prefill tokens/s at batch 1 for each --prefill length (default 4096, 16384);
//   decode ms per step at --context tokens (default 4096) for each --batch (default 1, 8):
//     prefill the context, then greedy steps (argmax read back to the host every step, as a
//     real decoder must) timed over --steps steps after --warmup steps.
// Prints a markdown table in the same format as bench/transformers_model.py, plus the
// weight-streaming bound of a decode step (bytes of weights / 3.0 TB/s, DESIGN.md §6).
//
//   build-gpu/bench/bench_model /tmp/qwen7b-random [--device cuda] [--dtype bf16]
//       [--prefill 4096,16384] [--context 4096] [--batch 1,8] [--steps 32] [--reps 3]
//       [--kv-cache full,fp16,kivi-4,kivi-2,h2o,streaming-llm,learned,knlp-v-pca-int8,
//        hybrid-k2-vpca8 --kv-context 32768]   (issue
//       11: TTFT, TPOT and sequences that fit, through full_cache or the CUDA kernels'
//       gpu_packed_cache; for gpu_packed_cache also the TPOT of the same greedy steps replayed from
//       a CUDA graph, row "e2e graph", right after the eager ones: --warmup + --steps more tokens,
//       the first warm-up step is the eager step + capture; --no-kv-graph skips it, --no-graph only
//       the plain cache's graph rows; "learned" runs a synthetic scorer, rows named
//       learned-synthetic; knlp-v-pca-int8 / hybrid-k2-vpca8 run a synthetic V PCA of rank 32,
//       int8, rows knlp-r32-synthetic / hybrid-r32-synthetic)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench/random_basis.h"
#include "kernels/common/error.h"
#include "model/decode_graph.h"
#include "model/full_cache.h"
#include "model/gpu_learned_scorer.h"
#include "model/gpu_packed_cache.h"
#include "model/llama.h"
#include "model/torch_util.h"
#include "runtime/kv_codec.h"

using namespace kvcal;

namespace {

struct options {
  std::string dir;
  std::string device = "cuda", dtype = "bf16";
  std::vector<std::int64_t> prefill = {4096, 16384};
  std::int64_t context = 4096;
  std::vector<std::int64_t> batch = {1, 8};
  int steps = 32, warmup = 4, reps = 3;
  bool graph = true;     // also time decode replayed from a CUDA graph
  bool kv_graph = true;  // the same for the --kv-cache kinds through gpu_packed_cache
  bool greedy = true;    // false: feed fixed tokens, no read-back per step (launch-bound check)
  // End to end through the CUDA kernels' cache (issue 11): "full" = full_cache (SDPA), "fp16" /
  // "kivi-4" / "kivi-2" / "h2o" (fp16 + H2O eviction, budget 1/8) / "streaming-llm" (fp16, 4
  // sinks + 1020 recent) / "learned" (fp16 + learned eviction, budget 1/8, a synthetic linear
  // scorer on the hidden state: the cost per step of a trained one) = gpu_packed_cache; empty =
  // skip.
  std::vector<std::string> kv_cache;
  std::int64_t kv_context = 32768, kv_batch = 8;
};

std::vector<std::int64_t> parse_list(const std::string& s) {
  std::vector<std::int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoll(item));
  return out;
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      KVCAL_CHECK(i + 1 < argc, a, " needs a value");
      return argv[++i];
    };
    if (a == "--device")
      o.device = value();
    else if (a == "--dtype")
      o.dtype = value();
    else if (a == "--prefill")
      o.prefill = parse_list(value());
    else if (a == "--context")
      o.context = std::stoll(value());
    else if (a == "--batch")
      o.batch = parse_list(value());
    else if (a == "--steps")
      o.steps = std::stoi(value());
    else if (a == "--warmup")
      o.warmup = std::stoi(value());
    else if (a == "--reps")
      o.reps = std::stoi(value());
    else if (a == "--no-readback")
      o.greedy = false;
    else if (a == "--no-graph")
      o.graph = false;
    else if (a == "--no-kv-graph")
      o.kv_graph = false;
    else if (a == "--kv-cache") {
      std::stringstream ss(value());
      std::string item;
      while (std::getline(ss, item, ',')) o.kv_cache.push_back(item);
    } else if (a == "--kv-context")
      o.kv_context = std::stoll(value());
    else if (a == "--kv-batch")
      o.kv_batch = std::stoll(value());
    else if (a == "-h" || a == "--help") {
      std::cout
          << "usage: bench_model CHECKPOINT_DIR [--device cuda] [--dtype bf16] "
             "[--prefill 4096,16384] [--context 4096] [--batch 1,8] [--steps 32] "
             "[--warmup 4] [--reps 3] [--no-readback] [--no-graph]\n"
             "       [--kv-cache "
             "full,fp16,kivi-4,kivi-2,h2o,streaming-llm,learned,knlp-v-pca-int8,hybrid-k2-vpca8] "
             "[--kv-context 32768] [--kv-batch 8] [--no-kv-graph]\n";
      std::exit(0);
    } else if (!a.empty() && a[0] == '-')
      KVCAL_FAIL("unknown option ", a);
    else
      o.dir = a;
  }
  KVCAL_CHECK(!o.dir.empty(), "usage: bench_model CHECKPOINT_DIR [options] (--help)");
  return o;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Waits for the device by reading a value back (no CUDA headers needed, so this compiles
// against a CPU-only libtorch too).
void sync(const at::Tensor& t) {
  if (t.defined()) (void)t.reshape({-1})[0].item<float>();
}

at::Tensor random_ids(std::int64_t B, std::int64_t T, std::int64_t vocab) {
  return at::randint(0, vocab, {B, T}, at::TensorOptions().dtype(at::kLong));
}

// The learned-eviction template's scorer shape (linear on the hidden state, one output per KV
// head) with random N(0, 1 / hidden) weights: a trained scorer's cost, random choices.
std::shared_ptr<const gpu_learned_scorer> synthetic_scorer(const model_config& c,
                                                           at::Device device) {
  preset_recipe r;
  r.model.n_layers = c.num_hidden_layers;
  r.model.n_kv_heads = c.num_key_value_heads;
  r.model.head_dim = c.head_dim;
  layer_recipe lr;
  lr.policy.kind = token_policy_kind::learned;
  lr.policy.learned.features = policy_features::hidden;
  lr.policy.learned.in_dim = c.hidden_size;
  lr.budget.kind = budget_kind::retain;
  lr.budget.retain = 0.125;
  r.layers.assign(static_cast<std::size_t>(c.num_hidden_layers), lr);
  tensor_views_f32 tv;  // host copies the views point at
  const std::int64_t H = c.num_key_value_heads, I = c.hidden_size;
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string pre = "layers." + std::to_string(l) + ".policy.";
    tv.add(pre + "weight", at::randn({H, I}).div_(std::sqrt(static_cast<double>(I))));
    tv.add(pre + "bias", at::zeros({H}));
  }
  return std::make_shared<const gpu_learned_scorer>(r, tv.views, device, "synthetic scorer");
}

// V PCA maps of rank r for every layer and KV head: random orthonormal rows (bench/random_basis.h)
// and a small random mean, as `kvcal bench` uses (speed does not depend on the basis).
std::shared_ptr<const latent_map_set> synthetic_v_maps(const model_config& c, int r) {
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int d = static_cast<int>(c.head_dim);
  auto maps = std::make_shared<latent_map_set>(static_cast<std::size_t>(c.num_hidden_layers));
  for (auto& layer : *maps)
    for (std::int64_t g = 0; g < c.num_key_value_heads; ++g) {
      const std::vector<float> basis = random_orthonormal_rows(rng, nd, r, d);
      std::vector<float> mean(static_cast<std::size_t>(d));
      for (auto& x : mean) x = 0.1f * nd(rng);
      layer.push_back(pca_maps(basis.data(), mean.data(), r, d));
    }
  return maps;
}

// One table row; bench/transformers_model.py prints the same columns.
void row(const char* engine, const char* phase, const std::string& shape, double value,
         const char* unit) {
  std::printf("| %-12s | %-7s | %-22s | %12.2f | %-7s |\n", engine, phase, shape.c_str(), value,
              unit);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const options o = parse(argc, argv);
    const at::Device device = parse_device(o.device);
    const at::ScalarType dtype = parse_compute_dtype(o.dtype);
    at::manual_seed(0);
    double t0 = now_s();
    const llama_model m = llama_model::load(o.dir, device, dtype);
    const model_config& c = m.config();
    const double weight_gb = static_cast<double>(m.weights().bytes) / 1e9;
    std::fprintf(stderr,
                 "loaded %s: %s, %lld layers, hidden %lld, %lld q / %lld kv heads, d %lld, "
                 "%.2f GB of weights in %s %s, %.1f s\n",
                 o.dir.c_str(), c.model_type.c_str(), static_cast<long long>(c.num_hidden_layers),
                 static_cast<long long>(c.hidden_size),
                 static_cast<long long>(c.num_attention_heads),
                 static_cast<long long>(c.num_key_value_heads), static_cast<long long>(c.head_dim),
                 weight_gb, device.str().c_str(), compute_dtype_name(dtype), now_s() - t0);

    std::printf("| %-12s | %-7s | %-22s | %12s | %-7s |\n", "engine", "phase", "shape", "value",
                "unit");
    std::printf("|--------------|---------|------------------------|--------------|---------|\n");
    for (std::int64_t L : o.prefill) {
      at::Tensor ids = random_ids(1, L, c.vocab_size);
      full_cache cache(c, 1, device, dtype, L);
      std::vector<double> times;
      for (int r = 0; r < o.reps + 1; ++r) {  // the first run warms up
        cache.reset();
        sync(ids.to(device));
        const double s = now_s();
        sync(m.forward(ids, cache, {logits_mode::last}));
        if (r > 0) times.push_back(now_s() - s);
      }
      std::sort(times.begin(), times.end());
      row("kvcal", "prefill", "B1 L" + std::to_string(L),
          static_cast<double>(L) / times[times.size() / 2], "tok/s");
    }
    for (std::int64_t B : o.batch) {
      full_cache cache(c, B, device, dtype, o.context + o.warmup + o.steps);
      sync(m.forward(random_ids(B, o.context, c.vocab_size), cache, {logits_mode::last}));
      at::Tensor next = random_ids(B, 1, c.vocab_size);
      double start = 0;
      for (int s = 0; s < o.warmup + o.steps; ++s) {
        if (s == o.warmup) start = now_s();
        at::Tensor logits = m.forward(next, cache, {logits_mode::last});  // [B, 1, V]
        if (o.greedy) next = logits.argmax(-1).to(at::kCPU);  // the read-back syncs every step
        if (s == o.warmup + o.steps - 1) sync(logits);
      }
      const double ms = (now_s() - start) * 1e3 / o.steps;
      row("kvcal", "decode", "B" + std::to_string(B) + " ctx" + std::to_string(o.context), ms,
          "ms/step");
    }
    if (o.graph && device.is_cuda() && decode_graph::available()) {
      // The same greedy steps replayed from a CUDA graph (model/decode_graph.h).
      for (std::int64_t B : o.batch) try {
          decode_graph g(m, B, o.context + o.warmup + o.steps);
          sync(g.prefill(random_ids(B, o.context, c.vocab_size)));
          at::Tensor next = random_ids(B, 1, c.vocab_size);
          double start = 0;
          for (int s = 0; s < o.warmup + o.steps; ++s) {
            if (s == o.warmup) start = now_s();
            at::Tensor logits = g.step(next);
            if (o.greedy) next = logits.argmax(-1).to(at::kCPU);
            if (s == o.warmup + o.steps - 1) sync(logits);
          }
          const double ms = (now_s() - start) * 1e3 / o.steps;
          row("kvcal graph", "decode", "B" + std::to_string(B) + " ctx" + std::to_string(o.context),
              ms, "ms/step");
        } catch (const std::exception& e) {
          std::fprintf(stderr, "bench_model: graph decode B%lld failed: %s\n",
                       static_cast<long long>(B), e.what());
        }
    }
    // End to end through the compressed GPU cache: TTFT of a B x kv_context prefill (compression
    // included), TPOT of greedy steps after it, the cache's bytes per sequence, and how many
    // sequences of kv_context tokens fit next to the weights on an 80 GB / 141 GB card (from the
    // bytes allocated; 10% of the card kept for activations and the allocator).
    for (const std::string& kind : o.kv_cache) try {
        const std::int64_t B = o.kv_batch, L = o.kv_context;
        const bool graph =
            o.kv_graph && kind != "full" && device.is_cuda() && decode_graph::available();
        const std::int64_t cap = L + (graph ? 2 : 1) * (o.warmup + o.steps);
        std::unique_ptr<kv_cache> cache;
        gpu_packed_cache* packed = nullptr;
        if (kind == "full") {
          cache = std::make_unique<full_cache>(c, B, device, dtype, cap);
        } else {
          gpu_packed_cache::options po;
          if (kind == "fp16")
            po.bits = 16;
          else if (kind == "kivi-4")
            po.bits = 4;
          else if (kind == "kivi-2")
            po.bits = 2;
          else if (kind == "h2o") {  // presets/templates/h2o.json: fp16, heavy 0.8, retain 1/8
            po.bits = 16;
            po.h2o = true;
            po.heavy = 0.8;
            po.retain = 0.125;
            po.residual = 0;  // the template's fp16 window: none (KIVI's 128 would widen recent)
          } else if (kind == "learned") {  // learned-eviction template: fp16, retain 1/8
            po.bits = 16;
            po.retain = 0.125;
            po.residual = 0;
            po.learned = synthetic_scorer(c, device);
          } else if (kind == "streaming-llm") {  // its template: fp16, 4 sinks + 1020 recent
            po.bits = 16;
            po.window = true;
            po.sinks = 4;
            po.recent = 1020;
          } else if (kind == "knlp-v-pca-int8" || kind == "hybrid-k2-vpca8") {
            // Their templates with a synthetic V PCA of rank 32, int8 latents: knlp K fp16,
            // adaptive 512 / 256; hybrid K 2-bit group 32, residual 128.
            const bool knlp = kind == "knlp-v-pca-int8";
            po.bits = knlp ? 16 : 2;
            po.residual = knlp ? 256 : 128;
            po.compress_after = knlp ? 512 : -1;
            po.v_latent_rank = 32;
            po.v_latent_bits = 8;
            po.v_maps = synthetic_v_maps(c, 32);
          } else
            KVCAL_FAIL("--kv-cache: unknown kind '", kind,
                       "' (full, fp16, kivi-4, kivi-2, h2o, "
                       "streaming-llm, learned, knlp-v-pca-int8, hybrid-k2-vpca8)");
          auto g = std::make_unique<gpu_packed_cache>(c, B, cap, po, device);
          packed = g.get();
          cache = std::move(g);
        }
        at::Tensor prompt = random_ids(B, L, c.vocab_size).to(device);
        sync(prompt);
        const double t_pf = now_s();
        at::Tensor logits = m.forward(prompt, *cache, {logits_mode::last});
        at::Tensor next = logits.argmax(-1).to(at::kCPU);
        const double ttft = now_s() - t_pf;
        double start = 0;
        for (int st = 0; st < o.warmup + o.steps; ++st) {
          if (st == o.warmup) start = now_s();
          logits = m.forward(next, *cache, {logits_mode::last});
          next = logits.argmax(-1).to(at::kCPU);
        }
        const double ms = (now_s() - start) * 1e3 / o.steps;
        double graph_ms = -1;  // the same steps replayed from a CUDA graph (model/decode_graph.h)
        if (graph) {
          decode_graph g(m, *cache, B);
          for (int st = 0; st < o.warmup + o.steps; ++st) {
            if (st == o.warmup) start = now_s();
            logits = g.step(next);
            next = logits.argmax(-1).to(at::kCPU);
          }
          graph_ms = (now_s() - start) * 1e3 / o.steps;
        }
        const double per_seq =
            packed ? static_cast<double>(packed->bytes_allocated()) / static_cast<double>(B)
                   : 2.0 *
                         static_cast<double>(c.num_hidden_layers * c.num_key_value_heads * cap *
                                             c.head_dim) *
                         2.0;
        const std::string name = kind == "learned"           ? "learned-synthetic"
                                 : kind == "knlp-v-pca-int8" ? "knlp-r32-synthetic"
                                 : kind == "hybrid-k2-vpca8" ? "hybrid-r32-synthetic"
                                                             : kind;
        const std::string shape = name + " B" + std::to_string(B) + " ctx" + std::to_string(L);
        row("kvcal e2e", "ttft", shape, ttft * 1e3, "ms");
        row("kvcal e2e", "tpot", shape, ms, "ms/step");
        if (graph_ms >= 0) row("e2e graph", "tpot", shape, graph_ms, "ms/step");
        row("kvcal e2e", "cache", shape + " /seq", per_seq / 1e6, "MB");
        for (double card : {80.0, 141.0}) {
          const double fit = (card * 0.9 - weight_gb) * 1e9 / per_seq;
          char sh[96];
          std::snprintf(sh, sizeof sh, "%s fits %.0fGB", name.c_str(), card);
          row("kvcal e2e", "batch", sh, fit > 0 ? std::floor(fit) : 0.0, "seqs");
        }
        std::fflush(stdout);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_model: --kv-cache %s failed: %s\n", kind.c_str(), e.what());
      }
    const double bound_ms = weight_gb / 3.0e3 * 1e3;  // GB / (3.0 TB/s) in ms
    char shape[64];
    std::snprintf(shape, sizeof shape, "weights %.2f GB", weight_gb);
    row("bound", "decode", shape, bound_ms, "ms/step");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_model: %s\n", e.what());
    return 1;
  }
}
