#include "train/ae_train.h"

#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iomanip>
#include <limits>
#include <sstream>

#include "calibrate/pca_format.h"
#include "kernels/common/error.h"
#include "kernels/common/log.h"
#include "runtime/io/atomic_file.h"
#include "runtime/io/safetensors.h"
#include "train/ae_net.h"
#include "train/train_common.h"
#include "train/train_data.h"

namespace kvcal {

namespace {

// Block layout: group g = (target t, layer index li[, KV head h]), target-major:
//   kv-head: g = (t * L + li) * n_kv + h;   layer: g = t * L + li.
struct ae_layout {
  std::vector<std::string> targets;  // "k" / "v"
  std::vector<int> layers;
  std::int64_t L = 0, n_kv = 0, n_heads = 0, d = 0;
  bool per_head = true;
  std::int64_t per_target() const { return L * (per_head ? n_kv : 1); }
  std::int64_t G() const { return static_cast<std::int64_t>(targets.size()) * per_target(); }
  std::int64_t row_floats() const {
    return static_cast<std::int64_t>(targets.size()) * L * n_kv * d;
  }
  // [B, F] token rows -> [G, B (x n_kv), d]
  at::Tensor to_groups(const at::Tensor& rows) const {
    const std::int64_t B = rows.size(0), nt = static_cast<std::int64_t>(targets.size());
    at::Tensor x = rows.view({B, nt, L, n_kv, d});
    if (per_head) return x.permute({1, 2, 3, 0, 4}).reshape({G(), B, d});
    return x.permute({1, 2, 0, 3, 4}).reshape({G(), B * n_kv, d});
  }
  // Target t's slice of [G, T (x n_kv), d] -> [L, n_kv, T, d]
  at::Tensor heads_of(const at::Tensor& xg, std::int64_t t, std::int64_t T) const {
    at::Tensor s = xg.narrow(0, t * per_target(), per_target());
    if (per_head) return s.reshape({L, n_kv, T, d});
    return s.reshape({L, T, n_kv, d}).permute({0, 2, 1, 3});
  }
};

// PCA of every block: basis columns by descending eigenvalue, mean, variance per element.
struct pca_stats {
  at::Tensor U;    // [G, d, d] f32
  at::Tensor mu;   // [G, d]
  at::Tensor var;  // [G]  trace(cov) / d
  std::string source;
};

ae_net linear_from_pca(const pca_stats& s, std::int64_t r) {
  ae_net n;
  at::Tensor Ur = s.U.narrow(2, 0, r).contiguous();     // [G, d, r]
  n.We = Ur.transpose(1, 2).contiguous();               // [G, r, d]
  n.be = -at::bmm(n.We, s.mu.unsqueeze(2)).squeeze(2);  // [G, r]
  n.Wd = Ur.clone();
  n.bd = s.mu.clone();
  return n;
}

std::string option_json(const ae_train_params& p, int latent) {
  // What changes the result (resume refuses a checkpoint written with other values).
  nlohmann::json j = loop_options_json(p);
  j.update({{"target", p.target},
            {"latent", latent},
            {"arch", p.arch},
            {"hidden", p.hidden},
            {"per", p.per},
            {"loss", p.loss},
            {"pca", p.pca},
            {"init", p.init}});
  return j.dump();
}

struct val_sequence {
  at::Tensor rows;  // [T, F] K/V of every layer (layout row order)
  at::Tensor q;     // [L, n_kv, rep, T, d] after RoPE (undefined without q)
  at::Tensor pos;   // [T]
  std::int64_t T = 0;
};

struct val_scores {
  at::Tensor err, den;            // [G] f64: sum |x - x'|^2, sum |x - mu|^2
  at::Tensor attn_err, attn_ref;  // [L, n_kv] f64 (undefined without q)
};

// Attention outputs: q [L, n_kv, rep, T, d] after RoPE, k before RoPE and v [L, n_kv, T, d]
// -> [L, n_kv, rep * T, d], causal and with the model's sliding window (0 = none).
at::Tensor attend(const torch_rope& rope, const at::Tensor& q, const at::Tensor& k,
                  const at::Tensor& v, const at::Tensor& pos, std::int64_t window) {
  const at::Tensor probs = sequence_attention_probs(q, rope.apply(k, pos), pos, window);
  return at::matmul(probs, v.unsqueeze(2)).flatten(2, 3);
}

}  // namespace

void validate_ae_params(const ae_train_params& p) {
  validate_loop_params(p, "train-ae");
  KVCAL_CHECK(p.target == "k" || p.target == "v" || p.target == "kv", "--target: '", p.target,
              "' is not k, v or kv");
  KVCAL_CHECK(p.arch == "linear" || p.arch == "mlp", "--arch: '", p.arch, "' is not linear or mlp");
  KVCAL_CHECK(p.per == "kv-head" || p.per == "layer", "--per: '", p.per,
              "' is not kv-head or layer");
  KVCAL_CHECK(p.loss == "recon" || p.loss == "attn", "--loss: '", p.loss, "' is not recon or attn");
  KVCAL_CHECK(p.init == "pca" || p.init == "random", "--init: '", p.init, "' is not pca or random");
  KVCAL_CHECK(p.latent >= 0, "--latent ", p.latent, " must be >= 1");
  KVCAL_CHECK(p.latent > 0 || p.ratio > 1, "give --latent N or --ratio R (R > 1)");
  KVCAL_CHECK(p.hidden >= 0, "--hidden must be >= 0");
}

ae_train_result run_train_ae(const ae_train_params& p) {
  validate_ae_params(p);
  const auto t_start = std::chrono::steady_clock::now();
  ae_train_result res;
  capture_set cs(p.captures);
  const capture_header& h = cs.header();
  cs.require(p.target == "v" ? capture_item::v : capture_item::k, "train-ae --target " + p.target);
  if (p.target != "k") cs.require(capture_item::v, "train-ae --target " + p.target);
  if (p.loss == "attn") {
    cs.require(capture_item::q, "--loss attn needs the captured queries");
    cs.require(capture_item::k, "--loss attn needs the keys");
    cs.require(capture_item::v, "--loss attn needs the values");
  }
  const std::int64_t d = h.head_dim;
  const int latent =
      p.latent > 0 ? p.latent : static_cast<int>(std::lround(static_cast<double>(d) / p.ratio));
  KVCAL_CHECK(latent >= 1 && latent < d, "latent ", latent, " must be in [1, head_dim) = [1, ", d,
              "): a latent >= head_dim compresses nothing");
  res.latent = latent;
  const at::Device dev = training_device(p.device);
  res.device_used = dev.str();
  // Mixed precision: bf16 matmuls in the training forward; validation and selection stay fp32.
  const at::ScalarType compute = compute_dtype(p);
  at::manual_seed(p.seed);

  // Streams the rows hold: the trained ones, plus both K and V when the captures have q (the
  // attention-output error needs the exact other stream).
  bool have_q = true;
  for (std::size_t i = 0; i < cs.n_files(); ++i) {
    const capture_header& hi = cs.reader(i).header();
    have_q = have_q && hi.records(capture_item::q) && hi.records(capture_item::k) &&
             hi.records(capture_item::v);
  }
  // The attention error applies the model's sliding window; captures written before it was
  // recorded leave a Mistral model's window unknown.
  const std::int64_t window = cs.sliding_window();
  if (window < 0) {
    KVCAL_CHECK(p.loss != "attn", cs.reader(0).path(),
                ": the capture does not record the model's sliding window (written before kvcal "
                "recorded it) and a Mistral model may have one: capture it again for --loss attn");
    if (have_q)
      log_warn("train-ae: ", cs.reader(0).path(),
               " does not record the model's sliding window: no attention-output error reported "
               "(capture it again to get it)");
    have_q = false;
  }
  ae_layout lay;  // the trained blocks
  if (p.target == "k" || p.target == "kv") lay.targets.push_back("k");
  if (p.target == "v" || p.target == "kv") lay.targets.push_back("v");
  lay.layers = cs.layers();
  lay.L = static_cast<std::int64_t>(lay.layers.size());
  lay.n_kv = h.n_kv_heads;
  lay.n_heads = h.n_heads;
  lay.d = d;
  lay.per_head = p.per == "kv-head";
  ae_layout row_lay = lay;  // what a token row holds
  if (have_q) row_lay.targets = {"k", "v"};
  std::vector<std::int64_t> trained_idx;  // row_lay target index of each trained target
  for (const auto& t : lay.targets)
    for (std::size_t i = 0; i < row_lay.targets.size(); ++i)
      if (row_lay.targets[i] == t) trained_idx.push_back(static_cast<std::int64_t>(i));
  const std::int64_t G = lay.G(), Gt = lay.per_target(), L = lay.L, n_kv = lay.n_kv;
  const std::int64_t n_loaded = static_cast<std::int64_t>(row_lay.targets.size());
  std::unique_ptr<torch_rope> rope;
  if (have_q) rope = std::make_unique<torch_rope>(h.model_json, d, h.seq_len);

  auto read_rows = [&](const seq_ref& s) {  // [len, F]
    std::vector<at::Tensor> parts;
    for (const auto& t : row_lay.targets)
      for (int l : lay.layers) parts.push_back(cs.read(s, l, t));  // [len, n_kv, d]
    return at::stack(parts, 1).reshape({s.len, row_lay.row_floats()});
  };
  // Training rows stay in memory after their first read (up to --cache-mb).
  const row_loader load_rows = cached_loader(read_rows, p.cache_mb << 20);
  auto groups_of = [&](const at::Tensor& rows) {  // [B, F] -> trained [G, B(*n_kv), d]
    at::Tensor all = row_lay.to_groups(rows);
    std::vector<at::Tensor> parts;
    for (auto i : trained_idx) parts.push_back(all.narrow(0, i * Gt, Gt));
    return parts.size() == 1 ? parts[0] : at::cat(parts, 0);
  };
  auto load_q = [&](const seq_ref& s, const at::Tensor& pos) {  // [L, n_kv, rep, T, d] roped
    std::vector<at::Tensor> parts;
    for (int l : lay.layers) parts.push_back(cs.read(s, l, "q"));  // [T, H, d]
    const std::int64_t rep = lay.n_heads / n_kv;
    at::Tensor q =
        at::stack(parts, 0).view({L, s.len, n_kv, rep, d}).permute({0, 2, 3, 1, 4}).to(dev);
    return rope->apply(q, pos);
  };
  // Per (layer, KV head): {sum |o' - o|^2, sum |o|^2} [L, n_kv] with the trained streams
  // replaced by their reconstruction xr ([G, T(*n_kv), d]).
  auto attn_error = [&](const at::Tensor& rows, const at::Tensor& xr, const at::Tensor& q,
                        const at::Tensor& pos) {
    const std::int64_t T = rows.size(0);
    at::Tensor x = rows.view({T, n_loaded, L, n_kv, d});
    at::Tensor k = x.select(1, 0).permute({1, 2, 0, 3}), v = x.select(1, 1).permute({1, 2, 0, 3});
    at::Tensor kh = k, vh = v;
    for (std::size_t t = 0; t < lay.targets.size(); ++t)
      (lay.targets[t] == "k" ? kh : vh) = lay.heads_of(xr, static_cast<std::int64_t>(t), T);
    at::Tensor o_ref;
    {
      at::NoGradGuard ng;
      o_ref = attend(*rope, q, k, v, pos, window);
    }
    at::Tensor o = attend(*rope, q, kh, vh, pos, window);
    return std::make_pair((o - o_ref).pow(2).sum({2, 3}), o_ref.pow(2).sum({2, 3}));
  };

  const sequence_split split = cs.split(p.val_fraction, p.val_max_tokens, p.seed);
  log_info("train-ae: ", split.train.size(), " training sequence(s) (", split.train_tokens,
           " tokens), ", split.val.size(), " held out (", split.val_tokens, " tokens); ", G,
           " blocks, latent ", latent, ", on ", dev.str());

  // ---- PCA: from --pca or fitted on the training sequences ------------------------------------
  pca_stats pca;
  const std::int64_t hpg = lay.per_head ? n_kv : 1;  // heads per group index
  if (!p.pca.empty()) {
    const pca_file f = read_pca_file(p.pca);
    KVCAL_CHECK(fingerprint_json(f.model_json) == fingerprint_json(h.model_json), p.pca,
                ": fitted on another model than the captures:\n  ", p.pca, ": ",
                fingerprint_json(f.model_json).dump(), "\n  ", cs.reader(0).path(), ": ",
                fingerprint_json(h.model_json).dump());
    KVCAL_CHECK(lay.per_head || f.granularity == "layer", p.pca,
                ": granularity is kv-head; --per layer needs a fit-pca --granularity layer file");
    std::vector<float> U(static_cast<std::size_t>(G * d * d)), mu(static_cast<std::size_t>(G * d)),
        var(static_cast<std::size_t>(G));
    for (std::size_t t = 0; t < lay.targets.size(); ++t)
      for (std::int64_t li = 0; li < L; ++li)
        for (std::int64_t hh = 0; hh < hpg; ++hh) {
          const std::int64_t g = (static_cast<std::int64_t>(t) * L + li) * hpg + hh;
          const pca_block* b = f.find(lay.targets[t], lay.layers[li], hh);
          KVCAL_CHECK(b != nullptr, p.pca, ": no ", lay.targets[t], " basis for layer ",
                      lay.layers[li], ", KV head ", hh);
          double tr = 0;
          for (std::int64_t i = 0; i < d; ++i) {
            mu[g * d + i] = static_cast<float>(b->mean[i]);
            tr += b->eigenvalues[i];
            for (std::int64_t j = 0; j < d; ++j)
              U[(g * d + i) * d + j] = static_cast<float>(b->basis[i * d + j]);
          }
          var[g] = static_cast<float>(std::max(tr / static_cast<double>(d), 1e-12));
        }
    pca.U = at::tensor(U).view({G, d, d});
    pca.mu = at::tensor(mu).view({G, d});
    pca.var = at::tensor(var);
    pca.source = p.pca;
  } else {
    at::Tensor sum = at::zeros({G, d}, at::kDouble), xtx = at::zeros({G, d, d}, at::kDouble);
    std::int64_t n = 0;
    for (const auto& s : split.train) {
      at::Tensor x = groups_of(load_rows(s)).to(at::kDouble);  // [G, B, d]
      sum += x.sum(1);
      xtx += at::bmm(x.transpose(1, 2), x);
      n += x.size(1);
    }
    at::Tensor mean = sum / static_cast<double>(n);
    at::Tensor cov = xtx / static_cast<double>(n) - at::bmm(mean.unsqueeze(2), mean.unsqueeze(1));
    auto eig = at::linalg_eigh(cov, "L");
    at::Tensor evals = std::get<0>(eig).flip({1}), evecs = std::get<1>(eig).flip({2});
    at::Tensor idx = evecs.abs().argmax(1, true);  // largest-|.| entry of a column positive
    at::Tensor sgn = evecs.gather(1, idx).sign();
    sgn = at::where(sgn == 0, at::ones_like(sgn), sgn);
    pca.U = (evecs * sgn).to(at::kFloat).contiguous();
    pca.mu = mean.to(at::kFloat);
    pca.var = (evals.clamp_min(0).sum(1) / static_cast<double>(d)).clamp_min(1e-12).to(at::kFloat);
    pca.source = "fitted on the training sequences";
  }
  const at::Tensor mu_dev = pca.mu.to(dev), var_dev = pca.var.to(dev);

  // ---- Validation data (cached on the device) --------------------------------------------------
  std::vector<val_sequence> val;
  for (const auto& s : split.val) {
    val_sequence v;
    v.T = s.len;
    v.rows = read_rows(s).to(dev);
    v.pos = cs.positions(s).to(dev);
    if (have_q) v.q = load_q(s, v.pos);
    val.push_back(std::move(v));
  }
  auto evaluate = [&](const ae_net& net) {
    at::NoGradGuard ng;
    val_scores sc;
    sc.err = at::zeros({G}, at::kDouble);
    sc.den = at::zeros({G}, at::kDouble);
    if (have_q) {
      sc.attn_err = at::zeros({L, n_kv}, at::kDouble);
      sc.attn_ref = at::zeros({L, n_kv}, at::kDouble);
    }
    for (const auto& v : val) {
      at::Tensor x = groups_of(v.rows);
      at::Tensor xr = net.forward(x);
      sc.err += (xr - x).pow(2).sum({1, 2}).to(at::kCPU).to(at::kDouble);
      sc.den += (x - mu_dev.unsqueeze(1)).pow(2).sum({1, 2}).to(at::kCPU).to(at::kDouble);
      if (have_q) {
        auto e = attn_error(v.rows, xr, v.q, v.pos);
        sc.attn_err += e.first.to(at::kCPU).to(at::kDouble);
        sc.attn_ref += e.second.to(at::kCPU).to(at::kDouble);
      }
    }
    return sc;
  };
  // Score of each block ([G]): relative reconstruction error (recon) or the relative attention
  // error of its (layer, KV head) / layer (attn).
  auto block_scores = [&](const val_scores& sc) {
    if (p.loss == "recon") return (sc.err / sc.den.clamp_min(1e-30)).to(at::kFloat);
    at::Tensor e = sc.attn_err, r = sc.attn_ref;
    if (!lay.per_head) e = e.sum(1), r = r.sum(1);
    at::Tensor unit = (e / r.clamp_min(1e-30)).reshape({-1});
    std::vector<at::Tensor> parts(lay.targets.size(), unit);
    return at::cat(parts, 0).to(at::kFloat);
  };

  // ---- Model -----------------------------------------------------------------------------------
  const std::int64_t hid = p.hidden > 0 ? p.hidden : d;
  const ae_net pca_net = [&] {
    ae_net n = linear_from_pca(pca, latent);
    std::vector<at::Tensor> ps;
    for (auto& t : n.params()) ps.push_back(t.to(dev));
    n.set_params(ps);
    return n;
  }();
  ae_net net;
  if (p.init == "pca") {
    net = pca_net.clone();
  } else {
    net.We = at::randn({G, latent, d}) / std::sqrt(static_cast<double>(d));
    net.be = at::zeros({G, latent});
    net.Wd = at::randn({G, d, latent}) / std::sqrt(static_cast<double>(latent));
    net.bd = pca.mu.clone();
  }
  net.mlp = p.arch == "mlp";
  if (net.mlp) {
    net.E1 = at::randn({G, hid, d}) / std::sqrt(static_cast<double>(d));
    net.c1 = at::zeros({G, hid});
    net.E2 = at::zeros({G, latent, hid});
    net.D1 = at::randn({G, hid, latent}) / std::sqrt(static_cast<double>(latent));
    net.c2 = at::zeros({G, hid});
    net.D2 = at::zeros({G, d, hid});
  }
  {
    std::vector<at::Tensor> ps;
    for (auto& t : net.params())
      ps.push_back(t.detach().to(dev).contiguous().set_requires_grad(true));
    net.set_params(ps);
  }

  // ---- Training (train/train_loop.h: selection, early stopping, checkpoints) ----------------
  ae_net best = net.clone();
  const std::int64_t steps_per_epoch = [&] {
    if (p.loss == "attn")
      return static_cast<std::int64_t>(sequence_batches(split.train, p.batch, 0).size());
    return row_shuffler(split.train, load_rows, p.shuffle_buffer, p.batch, 0).n_batches();
  }();
  const std::string options = option_json(p, latent);
  train_loop loop(p, "train-ae", options, net.params(), best.params(), steps_per_epoch);
  auto validate = [&] { return block_scores(evaluate(net)); };
  loop.begin(validate);
  const bool done = loop.run(
      [&](int, std::uint64_t seed) {
        if (p.loss == "recon") {
          row_shuffler sh(split.train, load_rows, p.shuffle_buffer, p.batch, seed);
          at::Tensor rows;
          while (sh.next(rows)) {
            at::Tensor x = groups_of(rows.to(dev));
            at::Tensor xr = net.forward(x, compute);
            loop.step(((xr - x).pow(2).mean({1, 2}) / var_dev).mean(), rows.size(0));
          }
          return;
        }
        for (const auto& mb : sequence_batches(split.train, p.batch, seed)) {
          at::Tensor loss = at::zeros({}, at::TensorOptions().device(dev));
          std::int64_t n = 0;
          for (const auto& s : mb) {
            at::Tensor rows = load_rows(s).to(dev), pos = cs.positions(s).to(dev);
            at::Tensor q = load_q(s, pos);
            auto e = attn_error(rows, net.forward(groups_of(rows), compute), q, pos);
            loss = loss + (e.first / e.second.clamp_min(1e-30)).mean();
            n += s.len;
          }
          loop.step(loss / static_cast<double>(mb.size()), n);
        }
      },
      validate);
  loop.summarise(res);
  if (!done) return res;

  // ---- Report ----------------------------------------------------------------------------------
  const val_scores s_pca = evaluate(pca_net), s_ae = evaluate(best);
  auto layer_ratio = [&](const val_scores& sc, std::size_t t, std::int64_t li) {
    const at::Tensor e = sc.err.narrow(0, (static_cast<std::int64_t>(t) * L + li) * hpg, hpg);
    const at::Tensor r = sc.den.narrow(0, (static_cast<std::int64_t>(t) * L + li) * hpg, hpg);
    return e.sum().item<double>() / std::max(r.sum().item<double>(), 1e-30);
  };
  nlohmann::json jl = nlohmann::json::array();
  for (std::int64_t li = 0; li < L; ++li) {
    ae_layer_metrics m;
    m.layer = lay.layers[li];
    for (std::size_t t = 0; t < lay.targets.size(); ++t) {
      (lay.targets[t] == "k" ? m.k_pca : m.v_pca) = layer_ratio(s_pca, t, li);
      (lay.targets[t] == "k" ? m.k_ae : m.v_ae) = layer_ratio(s_ae, t, li);
    }
    if (have_q) {
      m.attn_pca = s_pca.attn_err[li].sum().item<double>() /
                   std::max(s_pca.attn_ref[li].sum().item<double>(), 1e-30);
      m.attn_ae = s_ae.attn_err[li].sum().item<double>() /
                  std::max(s_ae.attn_ref[li].sum().item<double>(), 1e-30);
    }
    res.layers.push_back(m);
    auto opt_num = [](double v) { return v < 0 ? nlohmann::json(nullptr) : nlohmann::json(v); };
    jl.push_back({{"layer", m.layer},
                  {"k_rel_error_pca", opt_num(m.k_pca)},
                  {"k_rel_error_ae", opt_num(m.k_ae)},
                  {"v_rel_error_pca", opt_num(m.v_pca)},
                  {"v_rel_error_ae", opt_num(m.v_ae)},
                  {"attn_error_pca", opt_num(m.attn_pca)},
                  {"attn_error_ae", opt_num(m.attn_ae)}});
  }
  res.report = {{"latent", latent},
                {"head_dim", d},
                {"arch", p.arch},
                {"loss", p.loss},
                {"pca", pca.source},
                {"train_tokens", split.train_tokens},
                {"val_tokens", split.val_tokens},
                {"epochs_run", res.epochs_run},
                {"steps", res.steps},
                {"early_stopped", res.early_stopped},
                {"validation_score_init", res.init_val},
                {"validation_score_best", res.best_val},
                {"train_loss", res.train_loss},
                {"samples_per_s", res.samples_per_s},
                {"device", res.device_used},
                {"layers", jl}};

  // ---- Output ----------------------------------------------------------------------------------
  f32_tensor_file file;
  for (std::int64_t li = 0; li < L; ++li)
    for (std::size_t t = 0; t < lay.targets.size(); ++t)
      for (std::int64_t hh = 0; hh < n_kv; ++hh) {
        const std::int64_t g =
            (static_cast<std::int64_t>(t) * L + li) * hpg + (lay.per_head ? hh : 0);
        const std::string pre = "layers." + std::to_string(lay.layers[li]) + "." + lay.targets[t] +
                                ".heads." + std::to_string(hh) + ".ae.";
        file.add(pre + "encoder.weight", best.We[g]);
        file.add(pre + "encoder.bias", best.be[g]);
        file.add(pre + "decoder.weight", best.Wd[g]);
        file.add(pre + "decoder.bias", best.bd[g]);
        if (best.mlp) {
          file.add(pre + "encoder.mlp.fc1.weight", best.E1[g]);
          file.add(pre + "encoder.mlp.fc1.bias", best.c1[g]);
          file.add(pre + "encoder.mlp.fc2.weight", best.E2[g]);
          file.add(pre + "decoder.mlp.fc1.weight", best.D1[g]);
          file.add(pre + "decoder.mlp.fc1.bias", best.c2[g]);
          file.add(pre + "decoder.mlp.fc2.weight", best.D2[g]);
        }
      }
  nlohmann::json meta = {{"format", ae_format_name},
                         {"version", ae_format_version},
                         {"model", fingerprint_json(h.model_json)},
                         {"arch", p.arch},
                         {"latent", latent},
                         {"hidden", best.mlp ? hid : 0},
                         {"per", p.per},
                         {"targets", lay.targets},
                         {"layers", lay.layers},
                         {"n_kv_heads", n_kv},
                         {"head_dim", d},
                         {"recipe", nlohmann::json::parse(options)},
                         {"metrics", res.report}};
  file.write(p.out, {{"kvcal.ae", meta.dump()}});
  loop.remove_checkpoint();
  if (p.write_report) {
    const std::string stem = output_stem(p.out);
    res.report_json_path = stem + ".json";
    write_file_atomic(res.report_json_path, res.report.dump(2) + "\n");
    std::vector<int> xs;
    svg_series kp{"K PCA", "#1f77b4", true, {}}, ka{"K AE", "#1f77b4", false, {}},
        vp{"V PCA", "#d62728", true, {}}, va{"V AE", "#d62728", false, {}},
        ap{"attn PCA", "#2ca02c", true, {}}, aa{"attn AE", "#2ca02c", false, {}};
    for (const auto& m : res.layers) {
      xs.push_back(m.layer);
      kp.y.push_back(m.k_pca < 0 ? NAN : m.k_pca);
      ka.y.push_back(m.k_ae < 0 ? NAN : m.k_ae);
      vp.y.push_back(m.v_pca < 0 ? NAN : m.v_pca);
      va.y.push_back(m.v_ae < 0 ? NAN : m.v_ae);
      ap.y.push_back(m.attn_pca < 0 ? NAN : m.attn_pca);
      aa.y.push_back(m.attn_ae < 0 ? NAN : m.attn_ae);
    }
    std::vector<svg_series> ser;
    for (auto* s : {&kp, &ka, &vp, &va, &ap, &aa})
      if (!s->y.empty() && std::isfinite(s->y[0])) ser.push_back(*s);
    res.svg_path = stem + ".svg";
    write_file_atomic(res.svg_path,
                      line_chart_svg("train-ae: relative error at latent " +
                                         std::to_string(latent) + " (dashed: PCA, solid: AE)",
                                     "relative error", xs, ser));
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return res;
}

std::string ae_report_table(const ae_train_result& r) {
  std::ostringstream os;
  auto cell = [&](double v) {
    std::ostringstream c;
    if (v < 0)
      c << "-";
    else
      c << std::setprecision(4) << v;
    os << std::setw(11) << c.str();
  };
  os << "relative error on held-out tokens at latent " << r.latent << " (lower is better)\n";
  os << std::setw(6) << "layer" << std::setw(11) << "K PCA" << std::setw(11) << "K AE"
     << std::setw(11) << "V PCA" << std::setw(11) << "V AE" << std::setw(11) << "attn PCA"
     << std::setw(11) << "attn AE"
     << "\n";
  for (const auto& m : r.layers) {
    os << std::setw(6) << m.layer;
    cell(m.k_pca), cell(m.k_ae), cell(m.v_pca), cell(m.v_ae), cell(m.attn_pca), cell(m.attn_ae);
    os << "\n";
  }
  return os.str();
}

}  // namespace kvcal
