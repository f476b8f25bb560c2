// The GPU packed cache's K latent mode (model/gpu_packed_cache.h, label gpu): K and V PCA latents
// of the same rank (ae-16-style presets), keys compressed before RoPE and reconstructed, then
// rotated, by the register-direct kernel, which needs head_dim 128. The reference model's
// head_dim is 64, so the test writes a small random Llama checkpoint with head_dim 128 (2 layers,
// 8 query / 2 KV heads, hidden 256, the reference model's tokenizer and vocabulary) and PCA maps
// of random orthonormal bases + means per (layer, KV head, K|V):
//   1. decode logits through the GPU cache vs the CPU runtime (runtime_cache) on the same recipe,
//      ranks 16 / 32 / 64 / 128, K and V latent bits 16 / 8 / 4 (mixed: K 8 with V 4, K 4 with
//      V 16), KIVI-style residual or the adaptive rule: max |dlogit| GPU vs CPU <= 0.25 x (CPU
//      runtime vs exact) + 2e-2 (the V latent test's bound: records byte-identical,
//      kernels/cuda/latent_append.h; the kernel rounds q, reconstructed keys and P to fp16 on
//      tensor cores where the CPU stays fp32); bytes_used = the CPU runtime's live bytes and the
//      layout's formula (K and V: one latent record per compressed token); fixed_bytes = both
//      streams' maps; K and V compressed counters equal (the kernel's requirement);
//   2. a prompt appended in pieces of 48 = in one piece (K latent records made by the prompt's
//      pieces, the adaptive crossing inside one): decode logits within 1e-5, same state counters;
//   3. decode replayed from a CUDA graph = eager (tokens identical, logits within 1e-5), device
//      counters = the host rule (kv_rule group 1 for K);
//   4. the cache refuses K latents without a V latent of the same rank, and at head_dim 64;
//   5. kvcal eval --gpu-kernels on the random checkpoint with a written K+V PCA preset: decode-PPL
//      within 5e-3 (relative) of the CPU runtime's.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "cli/app.h"
#include "kernels/cuda/kv_counters.h"
#include "model/decode_graph.h"
#include "model/full_cache.h"
#include "model/gpu_packed_cache.h"
#include "model/gpu_packed_options.h"
#include "model/llama.h"
#include "model/runtime_cache.h"
#include "presets/preset_template.h"
#include "presets/preset_writer.h"
#include "runtime/io/safetensors.h"
#include "runtime/model_config.h"
#include "runtime/preset_recipe.h"
#include "tests/test_util.h"
#include "tests/torch_doctest.h"
#include "tests/torch_gpu_util.h"

using namespace kvcal;
using namespace kvcal::test;

namespace {

const at::Device cuda(at::kCUDA, 0);
const std::string src = KVCAL_SOURCE_DIR;
const std::string ref_dir = src + "/data/models/kvcal-ref-v1";

void copy_file(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  REQUIRE(in.good());
  std::ofstream out(to, std::ios::binary);
  out << in.rdbuf();
  REQUIRE(out.good());
}

// A random Llama checkpoint with head_dim 128, written once per run: the reference model's
// config and tokenizer with 2 layers, 8 query / 2 KV heads of 128, hidden 256. Weights N(0, s^2)
// fp32: q / k s = 0.08 (attention logits of std ~1.6, not uniform), the rest 0.05, embedding 1,
// norms 1.
struct random_model {
  test::scratch_dir dir;
  model_config cfg;
  random_model() {
    nlohmann::json j;
    {
      std::ifstream in(ref_dir + "/config.json");
      j = nlohmann::json::parse(in);
    }
    j["head_dim"] = 128;
    j["hidden_size"] = 256;
    j["intermediate_size"] = 512;
    j["num_attention_heads"] = 8;
    j["num_key_value_heads"] = 2;
    j["num_hidden_layers"] = 2;
    test::write_bytes(dir.file("config.json"), j.dump(2));
    copy_file(ref_dir + "/tokenizer.json", dir.file("tokenizer.json"));
    copy_file(ref_dir + "/tokenizer_config.json", dir.file("tokenizer_config.json"));
    cfg = read_model_config(dir.file("config.json"));
    const std::int64_t H = cfg.hidden_size, V = cfg.vocab_size, I = cfg.intermediate_size;
    const std::int64_t d = cfg.head_dim, nq = cfg.num_attention_heads,
                       nkv = cfg.num_key_value_heads;
    at::manual_seed(29);
    std::vector<at::Tensor> keep;
    std::vector<tensor_out> outs;
    auto add = [&](const std::string& name, std::vector<std::int64_t> shape, double s) {
      at::Tensor t = s > 0 ? at::randn(shape, at::kFloat) * s : at::ones(shape, at::kFloat);
      t = t.contiguous();
      keep.push_back(t);
      outs.push_back({name, st_dtype::F32, shape, t.data_ptr()});
    };
    add("model.embed_tokens.weight", {V, H}, 1.0);
    for (std::int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      add(p + "input_layernorm.weight", {H}, 0);
      add(p + "post_attention_layernorm.weight", {H}, 0);
      add(p + "self_attn.q_proj.weight", {nq * d, H}, 0.08);
      add(p + "self_attn.k_proj.weight", {nkv * d, H}, 0.08);
      add(p + "self_attn.v_proj.weight", {nkv * d, H}, 0.05);
      add(p + "self_attn.o_proj.weight", {H, nq * d}, 0.05);
      add(p + "mlp.gate_proj.weight", {I, H}, 0.05);
      add(p + "mlp.up_proj.weight", {I, H}, 0.05);
      add(p + "mlp.down_proj.weight", {H, I}, 0.05);
    }
    add("model.norm.weight", {H}, 0);
    add("lm_head.weight", {V, H}, 0.05);
    write_safetensors(dir.file("model.safetensors"), outs);
  }
  std::string path() const { return dir.path(); }
};

const random_model& rmodel() {
  static random_model m;
  return m;
}

// One K+V PCA configuration: rank, K / V latent bits, residual, adaptive compress_after /
// keep_recent (-1: off).
struct kv_case {
  int rank, k_bits, v_bits, residual;
  std::int64_t compress_after, keep_recent;
};

// The recipe of `c` (every layer K and V PCA) and its tensors: per (layer, KV head, K|V) a random
// orthonormal basis [rank, d] (rows of a QR factor) and a mean [d] ~ N(0, 0.2^2).
struct kv_preset {
  preset_recipe recipe;
  std::vector<at::Tensor> store;  // fp32 CPU, contiguous: what tv / outs point at
  std::vector<tensor_view> tv;
  std::vector<tensor_out> outs;
};

std::unique_ptr<kv_preset> make_preset(const model_config& cfg, const kv_case& c, int seed) {
  auto p = std::make_unique<kv_preset>();
  p->recipe =
      expand_recipe(preset_template("knlp-v-pca-int8"), cfg, "kv-pca", recipe_parse_options{true});
  preset_recipe& r = p->recipe;
  r.adaptive.enabled = c.compress_after >= 0;
  r.adaptive.compress_after = std::max<std::int64_t>(0, c.compress_after);
  r.adaptive.keep_recent = std::max<std::int64_t>(0, c.keep_recent);
  for (auto& l : r.layers) {
    l.k = kv_method{};
    l.k.kind = kv_method_kind::pca;
    l.k.pca.rank = c.rank;
    l.k.pca.latent_bits = c.k_bits;
    l.v = kv_method{};
    l.v.kind = kv_method_kind::pca;
    l.v.pca.rank = c.rank;
    l.v.pca.latent_bits = c.v_bits;
    l.residual = c.residual;
  }
  const std::int64_t d = cfg.head_dim;
  at::manual_seed(seed);
  for (std::int64_t l = 0; l < cfg.num_hidden_layers; ++l)
    for (const char* s : {".k", ".v"})
      for (std::int64_t h = 0; h < cfg.num_key_value_heads; ++h) {
        const std::string pre = "layers." + std::to_string(l) + s + ".heads." + std::to_string(h);
        at::Tensor q = std::get<0>(at::linalg_qr(at::randn({d, c.rank}, at::kDouble)));
        p->store.push_back(q.t().to(at::kFloat).contiguous());  // [rank, d], orthonormal rows
        p->store.push_back((at::randn({d}, at::kFloat) * 0.2).contiguous());
        for (int b = 0; b < 2; ++b) {
          const at::Tensor& t = p->store[p->store.size() - 2 + static_cast<std::size_t>(b)];
          tensor_view v;
          v.name = pre + (b == 0 ? ".pca.basis" : ".pca.mean");
          v.dtype = st_dtype::F32;
          v.shape = b == 0 ? std::vector<std::int64_t>{c.rank, d} : std::vector<std::int64_t>{d};
          v.data = static_cast<const std::uint8_t*>(t.data_ptr());
          v.nbytes = static_cast<std::size_t>(t.nbytes());
          p->tv.push_back(v);
          p->outs.push_back({v.name, st_dtype::F32, v.shape, t.data_ptr()});
        }
      }
  return p;
}

// The GPU cache's rule for `o` (kernels/cuda/kv_counters.h): K latents compress token by token.
kv_rule rule_of(const gpu_packed_cache::options& o) {
  kv_rule r;
  r.residual = o.residual;
  r.group = 1;
  r.k_quant = r.v_quant = true;
  r.compress_after = o.compress_after;
  return r;
}

double latent_record(int rank, int bits) {
  return bits == 16 ? 2.0 * rank : 4.0 + rank * bits / 8.0;
}

// Bytes the layout gives for n tokens: kc = vc latent K and V records, fp16 rows of the rest.
double layout_bytes(const gpu_packed_cache::options& o, const model_config& cfg, std::int64_t B,
                    std::int64_t n) {
  const kv_rule r = rule_of(o);
  const std::int64_t kc = kv_k_compressed(n, r), vc = kv_v_compressed(n, r), d = cfg.head_dim;
  return static_cast<double>(B * cfg.num_key_value_heads * cfg.num_hidden_layers) *
         (static_cast<double>(kc) * latent_record(o.k_latent_rank, o.k_latent_bits) +
          static_cast<double>(vc) * latent_record(o.v_latent_rank, o.v_latent_bits) +
          static_cast<double>(2 * n - kc - vc) * d * 2.0);
}

// The device counters of every layer hold equal K and V compressed ranges.
void check_k_equals_v(const gpu_packed_cache& c, const model_config& cfg, std::int64_t B) {
  for (int l = 0; l < static_cast<int>(cfg.num_hidden_layers); ++l) {
    const std::vector<int> ctr = c.device_counters(l);
    for (std::int64_t b = 0; b < B; ++b) {
      CHECK(ctr[static_cast<std::size_t>(kv_kc_new * B + b)] ==
            ctr[static_cast<std::size_t>(kv_vc_new * B + b)]);
      CHECK(ctr[static_cast<std::size_t>(kv_k_from * B + b)] ==
            ctr[static_cast<std::size_t>(kv_v_from * B + b)]);
    }
  }
}

}  // namespace

TEST_CASE("gpu_packed_cache K latent: decode equals the CPU runtime (K+V PCA, d 128)") {
  if (!have_gpu()) return;
  const random_model& rm = rmodel();
  const llama_model g = llama_model::load(rm.path(), cuda, at::kFloat);
  const llama_model c = llama_model::load(rm.path(), at::kCPU, at::kFloat);
  const model_config& cfg = g.config();
  REQUIRE(cfg.head_dim == 128);
  // The prompt (16 tokens) stays fp16 on both sides (it is within every window below): the GPU
  // attends a prompt exactly, the CPU runtime through its compressed tokens.
  const std::int64_t B = 2, P = 16, N = 176;
  at::manual_seed(13);
  const at::Tensor ids =
      at::randint(0, cfg.vocab_size, {B, N}, at::TensorOptions().dtype(at::kLong));
  const kv_case cases[] = {{32, 16, 16, 32, -1, 0},
                           {16, 8, 8, 16, -1, 0},
                           {64, 8, 4, 0, 96, 48},
                           {128, 4, 16, 32, -1, 0}};
  int seed = 100;
  for (const kv_case& kc : cases) {
    CAPTURE(kc.rank);
    CAPTURE(kc.k_bits);
    CAPTURE(kc.v_bits);
    CAPTURE(kc.compress_after);
    const auto p = make_preset(cfg, kc, ++seed);
    gpu_packed_cache::options o = gpu_packed_options_of(p->recipe, p->tv, "kv-pca", cuda);
    o.piece = 24;  // a ring of max(residual + 1, compress_after) + 24 rows < N: it wraps
    REQUIRE(o.k_latent_rank == kc.rank);
    REQUIRE(o.v_latent_rank == kc.rank);
    REQUIRE(o.k_latent_bits == kc.k_bits);
    REQUIRE(o.v_latent_bits == kc.v_bits);
    REQUIRE(o.bits == 16);
    gpu_packed_cache pc(cfg, B, N, o, cuda);
    runtime_cache rc(cfg, p->recipe, p->tv, B);
    full_cache exact(cfg, B, at::kCPU, at::kFloat);
    const at::Tensor prompt = ids.narrow(1, 0, P);
    at::Tensor lg = g.forward(prompt.to(cuda), pc, {logits_mode::last}).cpu();
    at::Tensor lc = c.forward(prompt, rc, {logits_mode::last});
    at::Tensor le = c.forward(prompt, exact, {logits_mode::last});
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
    MESSAGE("rank ", kc.rank, " K ", kc.k_bits, "-bit V ", kc.v_bits,
            "-bit: GPU vs CPU runtime "
            "max |dlogit| ",
            gpu_cpu, " (prompt ", prompt_err, "); CPU runtime vs exact ", lat_err);
    CHECK(prompt_err <= 5e-2);
    CHECK(lat_err > 0);
    CHECK(gpu_cpu <= 0.25 * lat_err + 2e-2);
    CHECK(pc.length() == N);
    check_k_equals_v(pc, cfg, B);
    const cache_stats st = rc.stats();
    CHECK(static_cast<double>(pc.bytes_used()) == doctest::Approx(layout_bytes(o, cfg, B, N)));
    CHECK(pc.bytes_used() == st.bytes_used);
    const std::size_t maps =
        static_cast<std::size_t>(cfg.num_hidden_layers * cfg.num_key_value_heads) * 2 *
        static_cast<std::size_t>(2 * kc.rank * cfg.head_dim + kc.rank + cfg.head_dim) *
        sizeof(float);
    CHECK(pc.fixed_bytes() == maps);
    CHECK(pc.bytes_allocated() > pc.bytes_used());
  }
}

TEST_CASE("gpu_packed_cache K latent: a prompt in pieces = in one piece") {
  if (!have_gpu()) return;
  const random_model& rm = rmodel();
  const llama_model g = llama_model::load(rm.path(), cuda, at::kFloat);
  const model_config& cfg = g.config();
  const std::int64_t B = 2, P = 160, N = 200;
  at::manual_seed(17);
  const at::Tensor ids =
      at::randint(0, cfg.vocab_size, {B, N}, at::TensorOptions().dtype(at::kLong)).to(cuda);
  // Residual 32: every piece compresses; adaptive 96 / 48: pieces end at 48, 96 (dormant), 144
  // (crossing: 96 K and V tokens at once), 160.
  for (const kv_case& kc : {kv_case{32, 8, 8, 32, -1, 0}, kv_case{64, 16, 4, 0, 96, 48}}) {
    CAPTURE(kc.compress_after);
    const auto p = make_preset(cfg, kc, 7);
    const gpu_packed_cache::options o = gpu_packed_options_of(p->recipe, p->tv, "kv-pca", cuda);
    gpu_packed_cache::options o48 = o;
    o48.piece = 48;
    gpu_packed_cache one(cfg, B, N, o, cuda), pieces(cfg, B, N, o48, cuda);
    double worst = max_abs_diff(g.forward(ids.narrow(1, 0, P), one, {logits_mode::last}),
                                g.forward(ids.narrow(1, 0, P), pieces, {logits_mode::last}));
    for (int l = 0; l < static_cast<int>(cfg.num_hidden_layers); ++l) {
      const std::vector<int> a = one.device_counters(l), b = pieces.device_counters(l);
      for (int r : {kv_n_new, kv_kc_new, kv_vc_new})
        for (std::int64_t s = 0; s < B; ++s)
          CHECK(a[static_cast<std::size_t>(r * B + s)] == b[static_cast<std::size_t>(r * B + s)]);
    }
    for (std::int64_t t = P; t < N; ++t) {
      const at::Tensor x = ids.narrow(1, t, 1);
      worst = std::max(worst, max_abs_diff(g.forward(x, one, {logits_mode::last}),
                                           g.forward(x, pieces, {logits_mode::last})));
    }
    MESSAGE("prompt in pieces of 48 vs one piece: max |dlogit| ", worst);
    CHECK(worst <= 1e-5);
    CHECK(one.bytes_used() == pieces.bytes_used());
    check_k_equals_v(pieces, cfg, B);
  }
}

TEST_CASE("gpu_packed_cache K latent: decode replayed from a CUDA graph equals the eager decode") {
  if (!have_gpu()) return;
  const random_model& rm = rmodel();
  const llama_model m = llama_model::load(rm.path(), cuda, at::kFloat);
  const model_config& cfg = m.config();
  // Prompt 40 then 160 steps: residual 32 compresses one K and one V token per step; adaptive
  // 96 / 48 crosses at step 57 (49 K and V tokens at once, inside the replayed graph).
  const std::int64_t B = 2, P = 40, N = 160, cap = P + N;
  at::manual_seed(19);
  const at::Tensor prompt =
      at::randint(0, cfg.vocab_size, {B, P}, at::TensorOptions().dtype(at::kLong)).to(cuda);
  for (const kv_case& kc : {kv_case{32, 8, 4, 32, -1, 0}, kv_case{96, 16, 8, 0, 96, 48}}) {
    CAPTURE(kc.compress_after);
    const auto p = make_preset(cfg, kc, 11);
    gpu_packed_cache::options o = gpu_packed_options_of(p->recipe, p->tv, "kv-pca", cuda);
    o.piece = 32;  // the ring (65 / 128 rows) wraps during the replayed steps
    auto run = [&](gpu_packed_cache& cache, bool graph, at::Tensor& tokens) {
      return greedy_decode(m, cache, prompt, B, N, graph, tokens);
    };
    gpu_packed_cache eager(cfg, B, cap, o, cuda), replayed(cfg, B, cap, o, cuda);
    CHECK(replayed.graph_safe());
    at::Tensor te, tg;
    const at::Tensor le = run(eager, false, te), lg = run(replayed, true, tg);
    const double err = max_abs_diff(lg, le);
    const std::int64_t same = tg.eq(te).sum().item<std::int64_t>();
    MESSAGE("graph vs eager max |dlogit| ", err, ", identical tokens ", same, " / ", te.numel());
    CHECK(same == te.numel());
    CHECK(err <= 1e-5);
    CHECK(replayed.length() == cap);
    CHECK(replayed.bytes_used() == eager.bytes_used());
    CHECK(static_cast<double>(replayed.bytes_used()) ==
          doctest::Approx(layout_bytes(o, cfg, B, cap)));
    // Device counters after the last step (token cap - 1 appended) = the host rule.
    const kv_rule rule = rule_of(o);
    int rows[kv_ctr_rows];
    kv_step_rows(rows, cap - 1, kv_k_compressed(cap - 1, rule), kv_v_compressed(cap - 1, rule), 1,
                 rule);
    std::vector<int> want(static_cast<std::size_t>(kv_ctr_rows * B));
    for (int k = 0; k < kv_ctr_rows; ++k)
      for (std::int64_t b = 0; b < B; ++b) want[static_cast<std::size_t>(k * B + b)] = rows[k];
    CHECK(rows[kv_kc_new] > 0);
    CHECK(rows[kv_kc_new] == rows[kv_vc_new]);
    for (int l = 0; l < static_cast<int>(cfg.num_hidden_layers); ++l) {
      CAPTURE(l);
      CHECK(replayed.device_counters(l) == want);
      CHECK(eager.device_counters(l) == want);
    }
  }
}

TEST_CASE("gpu_packed_cache K latent: refused without a V latent of its rank, or at head_dim 64") {
  if (!have_gpu()) return;
  auto msg = [](const model_config& cfg, const gpu_packed_cache::options& o) {
    try {
      gpu_packed_cache c(cfg, 1, 64, o, cuda);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  gpu_packed_cache::options o;
  o.k_latent_rank = 32;
  o.v_latent_rank = 16;
  const std::string e1 = msg(rmodel().cfg, o);
  CHECK_MESSAGE(e1.find("needs the V latent mode of the same rank") != std::string::npos, e1);
  o.v_latent_rank = 0;
  const std::string e2 = msg(rmodel().cfg, o);
  CHECK_MESSAGE(e2.find("needs the V latent mode of the same rank") != std::string::npos, e2);
  o.v_latent_rank = 32;
  const std::string e3 = msg(read_model_config(ref_dir + "/config.json"), o);
  CHECK_MESSAGE(e3.find("needs head_dim 128") != std::string::npos, e3);
}

// A K+V PCA preset written to disk (rank 32, 8-bit K and V latents, residual 32) and evaluated on
// the random checkpoint by the CLI, --prefill 1: every scored token decoded through the cache,
// the same computation on both sides.
TEST_CASE("kvcal eval --gpu-kernels K+V PCA preset: PPL close to the CPU runtime's") {
  if (!have_gpu()) return;
  const random_model& rm = rmodel();
  const test::scratch_dir scratch;
  const auto p = make_preset(rm.cfg, kv_case{32, 8, 8, 32, -1, 0}, 23);
  const std::string preset = scratch.file("kv-pca.safetensors");
  write_preset(preset, p->recipe, p->outs);
  std::vector<std::string> base = {
      "eval",         "--model",   rm.path(), "--text",    src + "/data/eval.txt",
      "--device",     "cuda",      "--dtype", "fp32",      "--preset",
      preset,         "--context", "320",     "--prefill", "1",
      "--max-tokens", "1536"};
  auto cpu = base, gpu = base;
  cpu.insert(cpu.end(), {"--json", scratch.file("cpu.json")});
  gpu.insert(gpu.end(), {"--gpu-kernels", "--json", scratch.file("gpu.json")});
  run_cli(cpu);
  run_cli(gpu);
  auto read = [](const std::string& f) {
    std::ifstream in(f);
    return nlohmann::json::parse(in);
  };
  const nlohmann::json jc = read(scratch.file("cpu.json")), jg = read(scratch.file("gpu.json"));
  const double pc = jc["presets"][0]["ppl"]["ppl"], pg = jg["presets"][0]["ppl"]["ppl"];
  MESSAGE("decode-PPL CPU runtime ", pc, ", CUDA kernels ", pg, ", baseline ",
          double(jc["baseline"]["ppl"]), "; GPU bytes held ",
          double(jg["presets"][0]["ppl"]["bytes_held"]), ", fixed ",
          double(jg["presets"][0]["ppl"]["fixed_bytes"]));
  CHECK(std::abs(pg / pc - 1.0) <= 5e-3);
  CHECK(double(jg["presets"][0]["ppl"]["fixed_bytes"]) > 0);
}
