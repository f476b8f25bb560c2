// The GPU packed cache's V latent mode and adaptive rule (model/gpu_packed_cache.h, label gpu) on
// the reference model, with V PCA bases fitted on its own activations (capture 1024 tokens,
// fit-pca --rank 32, export knlp-v-pca-int8 / hybrid-k2-vpca8 --pca: the real pipeline):
//   1. decode logits through the GPU cache vs the CPU runtime (runtime_cache) on the same preset,
//      knlp-like (K fp16, V PCA, adaptive compress_after 96 / keep_recent 48 so a 224-token run
//      crosses it) and hybrid (K KIVI-2 group 32, V PCA, residual 128), latent bits 16 / 8 / 4:
//      max |dlogit| GPU vs CPU <= 0.25 x (CPU runtime vs exact) + 2e-2, the KIVI test's bound (the
//      latent records are byte-identical, kernels/cuda/latent_append.h; attention rounds P and z
//      to fp16 on tensor cores where the CPU stays fp32); bytes_used = the CPU runtime's live
//      bytes and the layout's formula; fixed_bytes = the maps;
//   2. a prompt that crosses compress_after, appended in pieces of 48 = in one piece (the rule
//      depends on the token count only): decode logits equal within 1e-5, same device counters;
//   3. decode replayed from a CUDA graph = eager (greedy tokens identical, logits within 1e-5),
//      the crossing of compress_after inside the replayed steps; device counters = the host rule;
//   4. kvcal eval --gpu-kernels: decode-PPL of the exported knlp-v-pca-int8 (compress_after 512,
//      context 768) and hybrid-k2-vpca8 close to the CPU runtime's (relative 5e-3).
#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "cli/app.h"
#include "kernels/cuda/kv_counters.h"
#include "model/decode_graph.h"
#include "model/full_cache.h"
#include "model/gpu_packed_cache.h"
#include "model/gpu_packed_options.h"
#include "model/llama.h"
#include "model/runtime_cache.h"
#include "runtime/model_config.h"
#include "runtime/packed_support.h"
#include "runtime/preset.h"
#include "tests/test_util.h"
#include "tests/torch_doctest.h"
#include "tests/torch_gpu_util.h"

using namespace kvcal;
using namespace kvcal::test;

namespace {

const at::Device cuda(at::kCUDA, 0);
const std::string src = KVCAL_SOURCE_DIR;
const std::string model_dir = src + "/data/models/kvcal-ref-v1";

// The two latent presets exported once per run from a rank-32 PCA of the reference model.
struct latent_presets {
  test::scratch_dir dir;
  std::string knlp, hybrid;
  latent_presets() {
    const std::string cap = dir.file("calib.h5"), pca = dir.file("pca.h5");
    run_cli({"capture", "--model", model_dir, "--text", src + "/data/calib.txt", "--out", cap,
             "--max-tokens", "1024", "--seq-len", "128", "--record", "k,v"});
    run_cli({"fit-pca", "--capture", cap, "--out", pca, "--rank", "32", "--no-svg"});
    knlp = dir.file("knlp.safetensors");
    hybrid = dir.file("hybrid.safetensors");
    run_cli({"export", "--template", "knlp-v-pca-int8", "--model", model_dir, "--pca", pca, "--out",
             knlp});
    run_cli({"export", "--template", "hybrid-k2-vpca8", "--model", model_dir, "--pca", pca, "--out",
             hybrid});
  }
};

const latent_presets& presets() {
  static latent_presets p;
  return p;
}

// The preset's recipe with every layer's V latent at `bits` and, for compress_after >= 0, the
// adaptive mode at compress_after / keep_recent.
preset_recipe variant(const preset_file& f, int bits, std::int64_t compress_after,
                      std::int64_t keep_recent) {
  preset_recipe r = f.recipe();
  for (auto& l : r.layers) {
    REQUIRE(l.v.kind == kv_method_kind::pca);
    REQUIRE(l.heads.empty());
    l.v.pca.latent_bits = bits;
  }
  if (compress_after >= 0) {
    r.adaptive.enabled = true;
    r.adaptive.compress_after = compress_after;
    r.adaptive.keep_recent = keep_recent;
  }
  return r;
}

// Bytes the GPU cache's layout gives for n tokens (packed_kv.h), every layer and KV head.
double layout_bytes(const gpu_packed_cache::options& o, const model_config& cfg, std::int64_t B,
                    std::int64_t n) {
  kv_rule r;
  r.residual = o.residual;
  r.group = o.group;
  r.k_quant = o.bits != 16;
  r.v_quant = true;
  r.compress_after = o.compress_after;
  const std::int64_t kc = kv_k_compressed(n, r), vc = kv_v_compressed(n, r), d = cfg.head_dim;
  const double k_rec = o.bits == 16 ? 0.0 : d * 4.0 + o.group * d * o.bits / 8.0;
  const double v_rec =
      o.v_latent_bits == 16 ? 2.0 * o.v_latent_rank : 4.0 + o.v_latent_rank * o.v_latent_bits / 8.0;
  return static_cast<double>(B * cfg.num_key_value_heads * cfg.num_hidden_layers) *
         (static_cast<double>(kc / o.group) * k_rec + static_cast<double>(vc) * v_rec +
          static_cast<double>(2 * n - kc - vc) * d * 2.0);
}

}  // namespace

TEST_CASE("gpu_packed_cache V latent: decode equals the CPU runtime (knlp-like, hybrid; 16/8/4)") {
  if (!have_gpu()) return;
  const latent_presets& ps = presets();
  const llama_model g = llama_model::load(model_dir, cuda, at::kFloat);
  const llama_model c = llama_model::load(model_dir, at::kCPU, at::kFloat);
  const model_config& cfg = g.config();
  const std::int64_t B = 2, P = 64, N = 224;
  at::manual_seed(13);
  const at::Tensor ids =
      at::randint(0, cfg.vocab_size, {B, N}, at::TensorOptions().dtype(at::kLong));
  for (const std::string kind : {"knlp", "hybrid"}) {
    const preset_file f(kind == "knlp" ? ps.knlp : ps.hybrid);
    const std::vector<tensor_view>& tv = f.tensors().tensors();
    for (int bits : {16, 8, 4}) {
      CAPTURE(kind);
      CAPTURE(bits);
      // knlp-like: compress_after 96 / keep_recent 48 (the prompt of 64 stays fp16 on both
      // sides; step 97 compresses 49 V tokens at once); hybrid: the template's residual 128.
      const preset_recipe r = kind == "knlp" ? variant(f, bits, 96, 48) : variant(f, bits, -1, 0);
      const gpu_packed_cache::options o = gpu_packed_options_of(r, tv, f.path(), cuda);
      REQUIRE(o.v_latent_rank == 32);
      REQUIRE(o.v_latent_bits == bits);
      REQUIRE(o.compress_after == (kind == "knlp" ? 96 : -1));
      REQUIRE(o.bits == (kind == "knlp" ? 16 : 2));
      gpu_packed_cache pc(cfg, B, N, o, cuda);
      runtime_cache rc(cfg, r, tv, B);
      full_cache exact(cfg, B, at::kCPU, at::kFloat);
      const at::Tensor prompt = ids.narrow(1, 0, P);
      at::Tensor lg = g.forward(prompt.to(cuda), pc, {logits_mode::last}).cpu();
      at::Tensor lc = c.forward(prompt, rc, {logits_mode::last});
      at::Tensor le = c.forward(prompt, exact, {logits_mode::last});
      // The prompt is below compress_after / residual: both attend it exactly (fp16 K/V).
      const double prompt_err = max_abs_diff(lg, lc);
      double gpu_cpu = 0, lat_err = 0;
      for (std::int64_t t = P; t < N; ++t) {
        const at::Tensor x = ids.narrow(1, t, 1);
        lg = g.forward(x.to(cuda), pc, {logits_mode::last}).cpu();
        lc = c.forward(x, rc, {logits_mode::last});
        le = c.forward(x, exact, {logits_mode::last});
        gpu_cpu = std::max(gpu_cpu, max_abs_diff(lg, lc));
        lat_err = std::max(lat_err, max_abs_diff(lc, le));
      }
      MESSAGE(kind, " bits ", bits, ": GPU vs CPU runtime max |dlogit| ", gpu_cpu, " (prompt ",
              prompt_err, "); CPU runtime vs exact ", lat_err);
      CHECK(prompt_err <= 5e-2);  // fp16 K/V on both sides, as the fp16 cache vs full_cache
      CHECK(lat_err > 0);
      CHECK(gpu_cpu <= 0.25 * lat_err + 2e-2);
      // Bytes: the CPU runtime's live records + fp16 rows, and the layout's formula.
      CHECK(pc.length() == N);
      const cache_stats st = rc.stats();
      CHECK(static_cast<double>(pc.bytes_used()) == doctest::Approx(layout_bytes(o, cfg, B, N)));
      CHECK(pc.bytes_used() == st.bytes_used);
      const std::size_t maps =
          static_cast<std::size_t>(cfg.num_hidden_layers * cfg.num_key_value_heads) *
          (2 * 32 * cfg.head_dim + 32 + cfg.head_dim) * sizeof(float);
      CHECK(pc.fixed_bytes() == maps);
      CHECK(pc.bytes_allocated() > pc.bytes_used());
    }
  }
}

TEST_CASE("gpu_packed_cache V latent: a prompt crossing compress_after in pieces = in one piece") {
  if (!have_gpu()) return;
  const preset_file f(presets().knlp);
  const llama_model g = llama_model::load(model_dir, cuda, at::kFloat);
  const model_config& cfg = g.config();
  const std::int64_t B = 2, P = 160, N = 200;
  const preset_recipe r = variant(f, 8, 96, 48);
  gpu_packed_cache::options o = gpu_packed_options_of(r, f.tensors().tensors(), f.path(), cuda);
  gpu_packed_cache::options o48 = o;
  o48.piece = 48;  // pieces end at 48, 96 (dormant), 144 (crossing: 96 V tokens), 160
  gpu_packed_cache one(cfg, B, N, o, cuda), pieces(cfg, B, N, o48, cuda);
  at::manual_seed(17);
  const at::Tensor ids =
      at::randint(0, cfg.vocab_size, {B, N}, at::TensorOptions().dtype(at::kLong)).to(cuda);
  double worst = max_abs_diff(g.forward(ids.narrow(1, 0, P), one, {logits_mode::last}),
                              g.forward(ids.narrow(1, 0, P), pieces, {logits_mode::last}));
  // The state rows (held, K / V compressed) agree; the step rows (n_old, ranges) are those of
  // each cache's last piece and differ by design.
  for (int l = 0; l < static_cast<int>(cfg.num_hidden_layers); ++l) {
    const std::vector<int> a = one.device_counters(l), b = pieces.device_counters(l);
    for (int r : {kv_n_new, kv_kc_new, kv_vc_new})
      for (std::int64_t s = 0; s < B; ++s) CHECK(a[r * B + s] == b[r * B + s]);
  }
  for (std::int64_t t = P; t < N; ++t) {
    const at::Tensor x = ids.narrow(1, t, 1);
    worst = std::max(worst, max_abs_diff(g.forward(x, one, {logits_mode::last}),
                                         g.forward(x, pieces, {logits_mode::last})));
  }
  MESSAGE("prompt in pieces of 48 vs one piece: max |dlogit| ", worst);
  CHECK(worst <= 1e-5);
  CHECK(one.bytes_used() == pieces.bytes_used());
}

TEST_CASE("gpu_packed_cache V latent: decode replayed from a CUDA graph equals the eager decode") {
  if (!have_gpu()) return;
  const llama_model m = llama_model::load(model_dir, cuda, at::kFloat);
  const model_config& cfg = m.config();
  // Prompt 40 then 160 steps: knlp-like crosses compress_after 96 at step 57 (49 V tokens at
  // once, inside the replayed graph); hybrid compresses V from 129, K blocks at 160 and 192.
  const std::int64_t B = 2, P = 40, N = 160, cap = P + N;
  at::manual_seed(19);
  const at::Tensor prompt =
      at::randint(0, cfg.vocab_size, {B, P}, at::TensorOptions().dtype(at::kLong)).to(cuda);
  for (const std::string kind : {"knlp", "hybrid"}) {
    CAPTURE(kind);
    const preset_file f(kind == "knlp" ? presets().knlp : presets().hybrid);
    const preset_recipe r = kind == "knlp" ? variant(f, 8, 96, 48) : variant(f, 4, -1, 0);
    const gpu_packed_cache::options o =
        gpu_packed_options_of(r, f.tensors().tensors(), f.path(), cuda);
    auto run = [&](gpu_packed_cache& cache, bool graph, at::Tensor& tokens) {
      return greedy_decode(m, cache, prompt, B, N, graph, tokens);
    };
    gpu_packed_cache eager(cfg, B, cap, o, cuda), replayed(cfg, B, cap, o, cuda);
    CHECK(replayed.graph_safe());
    at::Tensor te, tg;
    const at::Tensor le = run(eager, false, te), lg = run(replayed, true, tg);
    const double err = max_abs_diff(lg, le);
    const std::int64_t same = tg.eq(te).sum().item<std::int64_t>();
    MESSAGE(kind, ": graph vs eager max |dlogit| ", err, ", identical tokens ", same, " / ",
            te.numel());
    CHECK(same == te.numel());
    CHECK(err <= 1e-5);
    CHECK(replayed.length() == cap);
    CHECK(replayed.bytes_used() == eager.bytes_used());
    CHECK(static_cast<double>(replayed.bytes_used()) ==
          doctest::Approx(layout_bytes(o, cfg, B, cap)));
    // Device counters after the last step (token cap - 1 appended) = the host rule.
    kv_rule rule;
    rule.residual = o.residual;
    rule.group = o.group;
    rule.k_quant = o.bits != 16;
    rule.v_quant = true;
    rule.compress_after = o.compress_after;
    int rows[kv_ctr_rows];
    kv_step_rows(rows, cap - 1, kv_k_compressed(cap - 1, rule), kv_v_compressed(cap - 1, rule), 1,
                 rule);
    std::vector<int> want(static_cast<std::size_t>(kv_ctr_rows * B));
    for (int k = 0; k < kv_ctr_rows; ++k)
      for (std::int64_t b = 0; b < B; ++b) want[static_cast<std::size_t>(k * B + b)] = rows[k];
    CHECK(rows[kv_vc_new] > 0);
    for (int l = 0; l < static_cast<int>(cfg.num_hidden_layers); ++l) {
      CAPTURE(l);
      CHECK(replayed.device_counters(l) == want);
      CHECK(eager.device_counters(l) == want);
    }
  }
}

// The exported presets as shipped (knlp: compress_after 512 / keep_recent 256, so the context is
// 768; hybrid: residual 128, context 320), --prefill 1: every scored token decoded through the
// cache, the same computation on both sides (the GPU attends a longer prompt exactly).
TEST_CASE("kvcal eval --gpu-kernels knlp-v-pca-int8 / hybrid-k2-vpca8: PPL close to the CPU's") {
  if (!have_gpu()) return;
  const latent_presets& ps = presets();
  const test::scratch_dir scratch;
  for (const auto& [preset, ctx] :
       {std::pair<std::string, std::string>{ps.knlp, "768"}, {ps.hybrid, "320"}}) {
    CAPTURE(preset);
    std::vector<std::string> base = {
        "eval",         "--model",   model_dir, "--text",    src + "/data/eval.txt",
        "--device",     "cuda",      "--dtype", "fp32",      "--preset",
        preset,         "--context", ctx,       "--prefill", "1",
        "--max-tokens", "1536"};
    auto cpu = base, gpu = base;
    cpu.insert(cpu.end(), {"--json", scratch.file("cpu.json")});
    gpu.insert(gpu.end(), {"--gpu-kernels", "--json", scratch.file("gpu.json")});
    run_cli(cpu);
    run_cli(gpu);
    auto read = [](const std::string& p) {
      std::ifstream in(p);
      return nlohmann::json::parse(in);
    };
    const nlohmann::json jc = read(scratch.file("cpu.json")), jg = read(scratch.file("gpu.json"));
    const double pc = jc["presets"][0]["ppl"]["ppl"], pg = jg["presets"][0]["ppl"]["ppl"];
    const double base_ppl = jc["baseline"]["ppl"];
    MESSAGE(preset, ": decode-PPL CPU runtime ", pc, ", CUDA kernels ", pg, ", baseline ", base_ppl,
            "; GPU bytes held ", double(jg["presets"][0]["ppl"]["bytes_held"]), ", fixed ",
            double(jg["presets"][0]["ppl"]["fixed_bytes"]));
    CHECK(std::abs(pg / pc - 1.0) <= 5e-3);
    CHECK(double(jg["presets"][0]["ppl"]["fixed_bytes"]) > 0);
  }
}
