#include "calibrate/pca_fit.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "calibrate/covariance.h"
#include "calibrate/covariance_gpu.h"
#include "calibrate/eigensolve.h"
#include "calibrate/pca_input.h"
#include "calibrate/pca_report.h"
#include "calibrate/rank_allocation.h"
#include "kernels/common/cuda_device.h"
#include "kernels/common/error.h"
#include "kernels/common/log.h"
#include "kernels/common/progress.h"
#include "runtime/io/sha256.h"

namespace kvcal {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// One read of the accumulation loop: rows [t0, t0 + rows) of one (target, layer) dataset.
struct work_item {
  size_t capture;
  std::int64_t t0, rows;
  size_t target;
  std::int64_t layer;  // the model's layer index
  std::int64_t li;     // its index among the recorded layers
  bool last_of_row_block;
};

struct read_block {
  std::vector<float> data;          // [rows, n_kv, d] (empty when `half` holds the block)
  std::vector<std::uint16_t> half;  // [rows, n_kv, d] fp16 bits, for the GPU's fp16 kernel
};

// Names the first non-finite value: layer, KV head, token and the rows of the block.
void check_finite(const std::vector<float>& x, std::int64_t rows, std::int64_t n_kv, std::int64_t d,
                  const work_item& it, const std::string& target, const std::string& path) {
  const size_t n = static_cast<size_t>(rows * n_kv * d);
  for (size_t i = 0; i < n; ++i) {
    if (std::isfinite(x[i])) continue;
    const std::int64_t row = static_cast<std::int64_t>(i) / (n_kv * d);
    const std::int64_t head = (static_cast<std::int64_t>(i) / d) % n_kv;
    KVCAL_FAIL(path, ": ", std::isnan(x[i]) ? "NaN" : "Inf", " in ", target, " of layer ", it.layer,
               ", KV head ", head, ", token ", it.t0 + row, " (block of tokens [", it.t0, ", ",
               it.t0 + rows, "))");
  }
}

// The same for fp16 bits (exponent all ones: Inf, or NaN with a non-zero mantissa).
void check_finite_f16(const std::vector<std::uint16_t>& x, std::int64_t rows, std::int64_t n_kv,
                      std::int64_t d, const work_item& it, const std::string& target,
                      const std::string& path) {
  const size_t n = static_cast<size_t>(rows * n_kv * d);
  for (size_t i = 0; i < n; ++i) {
    if ((x[i] & 0x7c00u) != 0x7c00u) continue;
    const std::int64_t row = static_cast<std::int64_t>(i) / (n_kv * d);
    const std::int64_t head = (static_cast<std::int64_t>(i) / d) % n_kv;
    KVCAL_FAIL(path, ": ", (x[i] & 0x3ffu) ? "NaN" : "Inf", " in ", target, " of layer ", it.layer,
               ", KV head ", head, ", token ", it.t0 + row, " (block of tokens [", it.t0, ", ",
               it.t0 + rows, "))");
  }
}

std::string fingerprint_text(const std::string& json) {
  try {
    return nlohmann::json::parse(json).dump();
  } catch (const nlohmann::json::exception&) {
    return json;
  }
}

}  // namespace

void validate_pca_fit_params(const pca_fit_params& p) {
  KVCAL_CHECK(!p.captures.empty(), "fit-pca: no --capture file");
  KVCAL_CHECK(!p.out.empty(), "fit-pca: no --out file");
  KVCAL_CHECK(!p.targets.empty(), "fit-pca: --target is empty");
  std::set<std::string> seen;
  for (const auto& t : p.targets) {
    KVCAL_CHECK(t == "k" || t == "v" || t == "k_rope", "--target: '", t,
                "' is not one of k, v, k_rope");
    KVCAL_CHECK(seen.insert(t).second, "--target: '", t, "' given twice");
  }
  KVCAL_CHECK(p.granularity == "kv-head" || p.granularity == "layer", "--granularity: '",
              p.granularity, "' is not kv-head or layer");
  const int rules = (p.rank != 0) + (p.energy != 0) + (p.bytes_per_token != 0);
  KVCAL_CHECK(rules <= 1, "give at most one of --rank, --energy, --bytes-per-token");
  KVCAL_CHECK(p.rank >= 0, "--rank ", p.rank, " must be >= 1");
  KVCAL_CHECK(p.energy == 0 || (p.energy > 0 && p.energy <= 1), "--energy ", p.energy,
              " must be in (0, 1]");
  KVCAL_CHECK(p.bytes_per_token >= 0 && std::isfinite(p.bytes_per_token), "--bytes-per-token ",
              p.bytes_per_token, " must be positive");
  KVCAL_CHECK(p.latent_bits == 16 || p.latent_bits == 8 || p.latent_bits == 4, "--latent-bits ",
              p.latent_bits, " is not one of 16, 8, 4");
  KVCAL_CHECK(p.device == "auto" || p.device == "cpu" || p.device == "cuda", "--device: '",
              p.device, "' is not auto, cpu or cuda");
  KVCAL_CHECK(p.max_tokens >= 0, "--max-tokens must be >= 0");
  KVCAL_CHECK(p.block_rows > 0, "block rows must be positive");
}

pca_fit_result run_pca_fit(const pca_fit_params& p) {
  validate_pca_fit_params(p);
  const auto t_start = clock_type::now();
  pca_fit_result res;

  // ---- Inputs: one model, every dataset present ------------------------------------------------
  std::vector<std::unique_ptr<pca_input>> ins;
  for (const auto& path : p.captures) ins.push_back(std::make_unique<pca_input>(path));
  const capture_info& c0 = ins[0]->info();
  const nlohmann::json fp0 = [&] {
    try {
      return nlohmann::json::parse(c0.model_json);
    } catch (const nlohmann::json::exception& e) {
      KVCAL_FAIL(c0.path, ": the 'model' attribute is not JSON: ", e.what());
    }
  }();
  for (size_t i = 1; i < ins.size(); ++i) {
    const capture_info& ci = ins[i]->info();
    nlohmann::json fpi;
    try {
      fpi = nlohmann::json::parse(ci.model_json);
    } catch (const nlohmann::json::exception& e) {
      KVCAL_FAIL(ci.path, ": the 'model' attribute is not JSON: ", e.what());
    }
    KVCAL_CHECK(fpi == fp0 && ci.n_layers == c0.n_layers && ci.n_kv_heads == c0.n_kv_heads &&
                    ci.head_dim == c0.head_dim,
                "captures of different models:\n  ", c0.path, ": ", fingerprint_text(c0.model_json),
                "\n  ", ci.path, ": ", fingerprint_text(ci.model_json));
  }
  const std::int64_t n_kv = c0.n_kv_heads, d = c0.head_dim;
  const std::vector<std::int64_t>& layers = c0.layers;  // recorded layers, the same in every file
  const std::int64_t n_layers = static_cast<std::int64_t>(layers.size());
  for (const auto& in : ins) {
    KVCAL_CHECK(in->info().layers == layers, "captures recorded different layers: ", c0.path, ": ",
                nlohmann::json(layers).dump(), ", ", in->info().path, ": ",
                nlohmann::json(in->info().layers).dump());
    for (const auto& t : p.targets)
      for (std::int64_t l : layers) in->check_dataset(l, t);
  }
  KVCAL_CHECK(p.rank == 0 || p.rank < d, "--rank ", p.rank, " must be in [1, head_dim) = [1, ", d,
              ")");

  const bool pooled = p.granularity == "layer";
  const std::int64_t n_targets = static_cast<std::int64_t>(p.targets.size());
  const std::int64_t n_slots = n_targets * n_layers;
  const std::int64_t heads_per_slot = pooled ? 1 : n_kv;

  // ---- Token plan
  // ---------------------------------------------------------------------------------
  std::vector<std::int64_t> use(ins.size());
  std::int64_t total = 0;
  for (size_t i = 0; i < ins.size(); ++i) {
    std::int64_t n = ins[i]->info().n_tokens;
    if (p.max_tokens > 0) n = std::min(n, p.max_tokens - total);
    use[i] = std::max<std::int64_t>(n, 0);
    total += use[i];
  }
  KVCAL_CHECK(total > 0, "fit-pca: the captures hold no tokens");
  std::vector<work_item> items;
  for (size_t c = 0; c < ins.size(); ++c)
    for (std::int64_t t0 = 0; t0 < use[c]; t0 += p.block_rows) {
      const std::int64_t rows = std::min(p.block_rows, use[c] - t0);
      for (size_t t = 0; t < p.targets.size(); ++t)
        for (std::int64_t li = 0; li < n_layers; ++li)
          items.push_back({c, t0, rows, t, layers[static_cast<size_t>(li)], li, false});
      items.back().last_of_row_block = true;
    }

  // Source hashes stream each file once more: run them beside the accumulation.
  std::vector<std::future<std::string>> hashes;
  if (p.hash_sources)
    for (const auto& path : p.captures)
      hashes.push_back(std::async(std::launch::async, [path] { return sha256_file(path); }));

  // ---- Device
  // -------------------------------------------------------------------------------------
  bool gpu = false;
  if (p.device != "cpu") {
    gpu = covariance_gpu_compiled() && cuda_device_count() > 0;
    if (!gpu && p.device == "cuda")
      log_warn("fit-pca: --device cuda but no usable GPU (", cuda_device_summary(),
               "); using the CPU");
  }
  res.device_used = gpu ? "cuda" : "cpu";

  // ---- Accumulate
  // ---------------------------------------------------------------------------------
  const auto t_acc = clock_type::now();
  std::vector<std::vector<cov_stats>> cpu_stats;
  std::unique_ptr<cov_accumulator_gpu> acc;
  if (gpu)
    acc = std::make_unique<cov_accumulator_gpu>(n_kv, d, pooled, p.block_rows, n_slots);
  else
    cpu_stats.assign(static_cast<size_t>(n_slots),
                     std::vector<cov_stats>(static_cast<size_t>(heads_per_slot), cov_stats(d)));
  const double elem_bytes = c0.dtype == "float16" ? 2 : 4;
  auto read = [&](const work_item& it) {
    read_block b;
    const size_t n = static_cast<size_t>(it.rows * n_kv * d);
    const pca_input& in = *ins[it.capture];
    if (gpu && p.gpu_fp16_kernel && in.info().dtype == "float16") {
      // fp16 captures reach the GPU as stored: half the copy, no conversion, fp16 kernel.
      b.half.resize(n);
      in.read_rows_f16(it.layer, p.targets[it.target], it.t0, it.rows, b.half.data());
      check_finite_f16(b.half, it.rows, n_kv, d, it, p.targets[it.target], in.info().path);
      return b;
    }
    b.data.resize(n);
    in.read_rows(it.layer, p.targets[it.target], it.t0, it.rows, b.data.data());
    check_finite(b.data, it.rows, n_kv, d, it, p.targets[it.target], in.info().path);
    return b;
  };
  {
    progress bar("fit-pca", static_cast<std::uint64_t>(total), "tok");
    // One read in flight while the previous block is accumulated (HDF5 is only ever called from
    // one thread at a time).
    std::future<read_block> next = std::async(std::launch::async, read, items[0]);
    for (size_t i = 0; i < items.size(); ++i) {
      read_block cur = next.get();
      if (i + 1 < items.size()) next = std::async(std::launch::async, read, items[i + 1]);
      const work_item& it = items[i];
      const std::int64_t slot = static_cast<std::int64_t>(it.target) * n_layers + it.li;
      if (gpu && !cur.half.empty())
        acc->add_host_half(cur.half.data(), it.rows, slot);
      else if (gpu)
        acc->add_host(cur.data.data(), it.rows, slot);
      else
        accumulate_rows_cpu(cpu_stats[static_cast<size_t>(slot)], cur.data.data(), it.rows, n_kv,
                            d);
      res.read_bytes += static_cast<double>(it.rows * n_kv * d) * elem_bytes;
      if (it.last_of_row_block) bar.advance(static_cast<std::uint64_t>(it.rows));
    }
    bar.finish();
  }
  res.seconds_accumulate = seconds_since(t_acc);

  // ---- Eigensolve (one batch over every block)
  // ---------------------------------------------------
  pca_file& f = res.file;
  f.model_json = c0.model_json;
  f.granularity = p.granularity;
  f.centered = p.center;
  f.latent_bits = p.latent_bits;
  f.targets = p.targets;
  f.n_layers = c0.n_layers;
  f.layers = layers;
  f.n_kv_heads = n_kv;
  f.head_dim = d;
  f.n_tokens = total;
  std::vector<std::vector<double>> covs;
  for (std::int64_t slot = 0; slot < n_slots; ++slot) {
    const std::vector<cov_stats> s =
        gpu ? acc->download(slot) : cpu_stats[static_cast<size_t>(slot)];
    for (std::int64_t h = 0; h < heads_per_slot; ++h) {
      const cov_stats& st = s[static_cast<size_t>(h)];
      pca_block b;
      b.target = p.targets[static_cast<size_t>(slot / n_layers)];
      b.layer = layers[static_cast<size_t>(slot % n_layers)];
      b.head = pooled ? -1 : h;
      b.count = static_cast<std::int64_t>(st.count);
      b.mean = p.center ? st.mean : std::vector<double>(static_cast<size_t>(d), 0.0);
      covs.push_back(st.covariance(p.center));
      f.blocks.push_back(std::move(b));
    }
  }
  acc.reset();
  cpu_stats.clear();
  const auto t_eig = clock_type::now();
  std::vector<eig_result> eig =
      eigh_batched(covs, d, gpu ? eig_device::cuda : eig_device::cpu, &res.eig_solver);
  res.seconds_eig = seconds_since(t_eig);
  for (size_t i = 0; i < f.blocks.size(); ++i) {
    f.blocks[i].eigenvalues = std::move(eig[i].values);
    f.blocks[i].basis = std::move(eig[i].vectors);
  }

  // ---- Ranks
  // -------------------------------------------------------------------------------------- k_rope
  // is a diagnostic (presets use pre-RoPE K): it takes the rank of the matching k block under a
  // byte budget and does not spend any of it.
  std::vector<size_t> budgeted;
  for (size_t i = 0; i < f.blocks.size(); ++i)
    if (f.blocks[i].target != "k_rope") budgeted.push_back(i);
  if (budgeted.empty())
    for (size_t i = 0; i < f.blocks.size(); ++i) budgeted.push_back(i);
  std::vector<rank_block> rb;
  for (size_t i : budgeted) {
    rank_block r;
    r.eigenvalues = f.blocks[i].eigenvalues;
    r.heads = pooled ? n_kv : 1;
    rb.push_back(std::move(r));
  }
  nlohmann::json rule;
  rank_plan plan;
  if (p.bytes_per_token > 0) {
    plan = ranks_for_budget(rb, p.bytes_per_token, p.latent_bits);
    for (size_t j = 0; j < budgeted.size(); ++j) f.blocks[budgeted[j]].rank = plan.ranks[j];
    for (auto& b : f.blocks)
      if (b.rank == 0) {
        const pca_block* k = f.find("k", b.layer, b.head);
        b.rank = k ? k->rank : plan.uniform_rank;
      }
    rule = {{"bytes_per_token", p.bytes_per_token},
            {"bits", plan.bits_per_token},
            {"budget_bits", plan.budget_bits}};
    res.budget_bits = plan.budget_bits;
    res.uniform_rank = plan.uniform_rank;
    res.uniform_discarded = plan.uniform_discarded;
  } else {
    std::vector<rank_block> all;
    for (const auto& b : f.blocks) all.push_back({b.eigenvalues, pooled ? n_kv : 1, ""});
    if (p.rank > 0) {
      plan = ranks_fixed(all, p.rank, p.latent_bits);
      rule = {{"rank", p.rank}};
    } else {
      const double e = p.energy > 0 ? p.energy : 0.99;
      plan = ranks_for_energy(all, e, p.latent_bits);
      rule = {{"energy", e}};
    }
    for (size_t i = 0; i < f.blocks.size(); ++i) f.blocks[i].rank = plan.ranks[i];
    std::vector<int> r;
    for (size_t i : budgeted) r.push_back(f.blocks[i].rank);
    plan.bits_per_token = plan_bits(rb, r, p.latent_bits);
    plan.discarded = discarded_variance(rb, r);
  }
  res.bits_per_token = plan.bits_per_token;
  res.discarded = plan.discarded;
  rule["latent_bits"] = p.latent_bits;
  f.rank_rule_json = rule.dump();

  // ---- Sources, output
  // ----------------------------------------------------------------------------
  for (size_t i = 0; i < ins.size(); ++i)
    f.sources.push_back({p.captures[i], p.hash_sources ? hashes[i].get() : "", use[i]});
  write_pca_file(p.out, f);
  if (p.write_svg) {
    std::string base = p.out;
    if (base.size() > 3 && base.compare(base.size() - 3, 3, ".h5") == 0)
      base.resize(base.size() - 3);
    res.svg_path = base + ".svg";
    write_pca_svg(f, res.svg_path);
  }
  res.seconds_total = seconds_since(t_start);
  return res;
}

}  // namespace kvcal
