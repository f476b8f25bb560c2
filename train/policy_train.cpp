#include "train/policy_train.h"

#include <ATen/core/grad_mode.h>

#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <cmath>
#include <iomanip>
#include <limits>
#include <memory>
#include <sstream>

#include "kernels/common/error.h"
#include "kernels/common/log.h"
#include "runtime/io/atomic_file.h"
#include "train/train_common.h"
#include "train/train_data.h"

namespace kvcal {

namespace {

// Per-layer networks batched along the first dimension: layer i maps [L, B, in] -> [L, B, out].
struct policy_net {
  std::vector<at::Tensor> W, b;  // W[i]: [L, in_i, out_i], b[i]: [L, out_i]
  // `compute`: the matmul dtype (bf16: mixed precision, fp32 master weights; fp32 result).
  at::Tensor forward(const at::Tensor& x, at::ScalarType compute = at::kFloat) const {
    at::Tensor h = x.to(compute);
    for (std::size_t i = 0; i < W.size(); ++i) {
      h = at::baddbmm(b[i].to(compute).unsqueeze(1), h, W[i].to(compute));
      if (i + 1 < W.size()) h = at::relu(h);
    }
    return h.to(at::kFloat);
  }
  std::vector<at::Tensor> params() const {
    std::vector<at::Tensor> p;
    for (std::size_t i = 0; i < W.size(); ++i) p.push_back(W[i]), p.push_back(b[i]);
    return p;
  }
  policy_net clone() const {
    policy_net n;
    for (std::size_t i = 0; i < W.size(); ++i)
      n.W.push_back(W[i].detach().clone()), n.b.push_back(b[i].detach().clone());
    return n;
  }
};

// Kept-token metrics of one score vector against the ground truth, at keep count k.
std::pair<double, double> keep_metrics(const at::Tensor& score, const at::Tensor& gt,
                                       const at::Tensor& gt_top, std::int64_t k) {
  at::Tensor kept = std::get<1>(score.topk(k));
  const double mass =
      gt.index_select(0, kept).sum().item<double>() / std::max(gt.sum().item<double>(), 1e-30);
  at::Tensor hit = at::zeros({gt.size(0)}, at::kBool);
  hit.index_fill_(0, gt_top.narrow(0, 0, k), true);
  const double recall = hit.index_select(0, kept).sum().item<double>() / static_cast<double>(k);
  return {mass, recall};
}

}  // namespace

void validate_policy_params(const policy_train_params& p) {
  validate_loop_params(p, "train-policy");
  KVCAL_CHECK(p.recipe == "h2o-label" || p.recipe == "future-attn", "--recipe: '", p.recipe,
              "' is not h2o-label or future-attn");
  KVCAL_CHECK(p.features.empty() || p.features == "key" || p.features == "hidden", "--features: '",
              p.features, "' is not key or hidden");
  KVCAL_CHECK(p.arch.empty() || p.arch == "linear" || p.arch == "mlp", "--arch: '", p.arch,
              "' is not linear or mlp");
  for (int h : p.hidden) KVCAL_CHECK(h >= 1, "--hidden: widths must be >= 1");
  KVCAL_CHECK(p.target == "attn_next" || p.target == "attn_cum", "--target: '", p.target,
              "' is not attn_next or attn_cum");
}

policy_train_result run_train_policy(const policy_train_params& p) {
  validate_policy_params(p);
  const auto t_start = std::chrono::steady_clock::now();
  policy_train_result res;
  const bool h2o = p.recipe == "h2o-label";
  res.features = !p.features.empty() ? p.features : (h2o ? "key" : "hidden");
  res.arch = !p.arch.empty() ? p.arch : "mlp";
  res.hidden = p.hidden;
  if (res.arch == "linear") {
    KVCAL_CHECK(p.hidden.empty(), "--hidden is for --arch mlp");
    res.hidden.clear();
  } else if (res.hidden.empty()) {
    res.hidden = h2o ? std::vector<int>{128, 64} : std::vector<int>{512};
  }
  const bool key = res.features == "key";

  capture_set cs(p.captures);
  const capture_header& h = cs.header();
  cs.require(capture_item::attn,
             "train-policy needs the attention statistics (labels, targets "
             "and the evaluation)");
  cs.require(key ? capture_item::k : capture_item::hidden,
             std::string("--features ") + res.features + " reads it");
  const at::Device dev = training_device(p.device);
  res.device_used = dev.str();
  const at::ScalarType compute = compute_dtype(p);
  at::manual_seed(p.seed);
  const std::vector<int>& layers = cs.layers();
  const std::int64_t L = static_cast<std::int64_t>(layers.size()), n_kv = h.n_kv_heads,
                     d = h.head_dim;
  const std::int64_t in = key ? d : h.hidden_size;  // per network input
  const std::int64_t fin = key ? n_kv * d : in;     // features per token and layer
  res.in_dim = in;

  // Row of a token: [L, fin] features then [L, n_kv] targets (label or log attention).
  auto read_rows = [&](const seq_ref& s) {
    std::vector<at::Tensor> feats, tgts;
    for (int l : layers) {
      feats.push_back(cs.read(s, l, key ? "k" : "hidden").reshape({s.len, fin}));
      if (h2o) {
        at::Tensor a = cs.read(s, l, "attn_cum");  // [len, n_kv]
        at::Tensor med = std::get<0>(a.median(0, true));
        tgts.push_back((a > med).to(at::kFloat));
      } else {
        tgts.push_back(at::log(cs.read(s, l, p.target) + 1e-6));
      }
    }
    return at::cat({at::stack(feats, 1).reshape({s.len, L * fin}),
                    at::stack(tgts, 1).reshape({s.len, L * n_kv})},
                   1);
  };
  // Training rows stay in memory after their first read (up to --cache-mb).
  const row_loader load_rows = cached_loader(read_rows, p.cache_mb << 20);
  const sequence_split split = cs.split(p.val_fraction, p.val_max_tokens, p.seed);
  log_info("train-policy: ", split.train.size(), " training sequence(s) (", split.train_tokens,
           " tokens), ", split.val.size(), " held out (", split.val_tokens, " tokens), ",
           res.features, " features, on ", dev.str());

  // Feature standardisation from the training sequences: per layer and input element.
  at::Tensor mu, sd;  // [L, in]
  {
    at::Tensor s1 = at::zeros({L, in}, at::kDouble), s2 = at::zeros({L, in}, at::kDouble);
    double n = 0;
    for (const auto& s : split.train) {
      at::Tensor x = load_rows(s).narrow(1, 0, L * fin).reshape({-1, L, key ? n_kv : 1, in});
      x = x.to(at::kDouble);
      s1 += x.sum(at::IntArrayRef{0, 2});
      s2 += x.pow(2).sum(at::IntArrayRef{0, 2});
      n += static_cast<double>(x.size(0) * x.size(2));
    }
    at::Tensor m = s1 / n;
    mu = m.to(at::kFloat);
    sd = (s2 / n - m * m).clamp_min(0).sqrt().clamp_min(1e-6).to(at::kFloat);
  }
  const at::Tensor mu_d = mu.to(dev).unsqueeze(1), sd_d = sd.to(dev).unsqueeze(1);
  // [B, F] rows -> inputs [L, B (x n_kv), in] standardised, targets [L, B, n_kv]
  auto split_rows = [&](const at::Tensor& rows) {
    const std::int64_t B = rows.size(0);
    at::Tensor x = rows.narrow(1, 0, L * fin).reshape({B, L, fin}).transpose(0, 1);
    x = x.reshape({L, key ? B * n_kv : B, in});
    at::Tensor y = rows.narrow(1, L * fin, L * n_kv).reshape({B, L, n_kv}).transpose(0, 1);
    return std::make_pair((x - mu_d) / sd_d, y);
  };
  // Network output [L, B(*n_kv), n_kv] -> scores [L, B, n_kv] (key: head g's column for head g)
  auto scores_of = [&](const at::Tensor& out, std::int64_t B) {
    if (!key) return out;
    return at::diagonal(out.reshape({L, B, n_kv, n_kv}), 0, 2, 3);
  };
  auto loss_of = [&](const at::Tensor& s, const at::Tensor& y) {  // per layer [L]
    if (h2o)
      return at::binary_cross_entropy_with_logits(s, y, {}, {}, at::Reduction::None).mean({1, 2});
    return (s - y).pow(2).mean({1, 2});
  };

  policy_net net;
  {
    std::vector<std::int64_t> widths = {in};
    for (int w : res.hidden) widths.push_back(w);
    widths.push_back(n_kv);
    for (std::size_t i = 0; i + 1 < widths.size(); ++i) {
      net.W.push_back(
          (at::randn({L, widths[i], widths[i + 1]}) / std::sqrt(static_cast<double>(widths[i])))
              .to(dev)
              .set_requires_grad(true));
      net.b.push_back(at::zeros({L, widths[i + 1]}).to(dev).set_requires_grad(true));
    }
  }
  std::vector<at::Tensor> val_rows;
  for (const auto& s : split.val) val_rows.push_back(read_rows(s).to(dev));
  auto evaluate = [&](const policy_net& n) {  // per-layer validation loss [L]
    at::NoGradGuard ng;
    at::Tensor tot = at::zeros({L}, at::kDouble);
    double cnt = 0;
    for (const auto& r : val_rows) {
      auto xy = split_rows(r);
      tot += loss_of(scores_of(n.forward(xy.first), r.size(0)), xy.second)
                 .to(at::kCPU)
                 .to(at::kDouble) *
             static_cast<double>(r.size(0));
      cnt += static_cast<double>(r.size(0));
    }
    return (tot / cnt).to(at::kFloat);
  };

  // ---- Training (train/train_loop.h: selection, early stopping, checkpoints) ----------------
  policy_net best = net.clone();
  nlohmann::json options = loop_options_json(p);
  options.update({{"recipe", p.recipe},
                  {"features", res.features},
                  {"arch", res.arch},
                  {"hidden", res.hidden},
                  {"target", p.target}});
  train_loop loop(p, "train-policy", options.dump(), net.params(), best.params(),
                  row_shuffler(split.train, load_rows, p.shuffle_buffer, p.batch, 0).n_batches());
  auto validate = [&] { return evaluate(net); };
  loop.begin(validate);
  const bool done = loop.run(
      [&](int, std::uint64_t seed) {
        row_shuffler sh(split.train, load_rows, p.shuffle_buffer, p.batch, seed);
        at::Tensor rows;
        while (sh.next(rows)) {
          auto xy = split_rows(rows.to(dev));
          loop.step(
              loss_of(scores_of(net.forward(xy.first, compute), rows.size(0)), xy.second).mean(),
              rows.size(0));
        }
      },
      validate);
  loop.summarise(res);
  if (!done) return res;

  // ---- Held-out evaluation at keep budgets -----------------------------------------------------
  const std::vector<double> budgets = {0.5, 0.25, 0.125};
  std::vector<std::vector<double>> acc(budgets.size(), std::vector<double>(8, 0.0));
  std::vector<std::vector<std::vector<double>>> acc_layer(
      budgets.size(),
      std::vector<std::vector<double>>(static_cast<std::size_t>(L), std::vector<double>(8, 0.0)));
  double units = 0;
  // With q and k captured the evaluation is causal (eviction at the midpoint of each sequence,
  // H2O with past attention only); otherwise it ranks whole sequences by the attention statistics.
  bool split_eval = true;
  for (std::size_t i = 0; i < cs.n_files(); ++i)
    split_eval = split_eval && cs.reader(i).header().records(capture_item::q) &&
                 cs.reader(i).header().records(capture_item::k);
  // The recomputed attention applies the model's sliding window; captures written before it was
  // recorded leave a Mistral model's window unknown: rank by the statistics instead.
  const std::int64_t window = cs.sliding_window();
  if (split_eval && window < 0) {
    log_warn("train-policy: ", cs.reader(0).path(),
             " does not record the model's sliding window: evaluation from the attention "
             "statistics instead of the causal one (capture it again to get it)");
    split_eval = false;
  }
  std::unique_ptr<torch_rope> rope;
  if (split_eval) rope = std::make_unique<torch_rope>(h.model_json, d, h.seq_len);
  res.causal_eval = split_eval;
  at::Generator gen = at::detail::createCPUGenerator(epoch_seed(p.seed, 1000003));
  {
    at::NoGradGuard ng;
    for (std::size_t si = 0; si < split.val.size(); ++si) {
      const seq_ref& s = split.val[si];
      if (split_eval && s.len < 4) continue;  // nothing to evict before a midpoint
      const at::Tensor& rows = val_rows[si];
      const at::Tensor learned =
          scores_of(best.forward(split_rows(rows).first), s.len).to(at::kCPU);  // [L, T, n_kv]
      const at::Tensor pos = cs.positions(s).to(at::kFloat);
      for (std::int64_t li = 0; li < L; ++li) {
        // Candidates, ground truth and the H2O score per KV head: [n_kv, n]
        at::Tensor gt_all, h2o_all, pos_c;
        std::int64_t n = s.len, first = 0;
        if (split_eval) {
          // Eviction at the midpoint t0, from the attention recomputed from q and k: candidates
          // are the tokens before t0, H2O sees the attention they got before t0, the ground truth
          // is the attention they get from the queries from t0 on.
          const std::int64_t T = s.len, t0 = T / 2, rep = h.n_heads / n_kv;
          at::Tensor pos_d = cs.positions(s).to(dev);
          at::Tensor q = rope->apply(cs.read(s, layers[li], "q").to(dev).permute({1, 0, 2}), pos_d);
          at::Tensor k = rope->apply(cs.read(s, layers[li], "k").to(dev).permute({1, 0, 2}), pos_d);
          at::Tensor A = sequence_attention_probs(q.reshape({n_kv, rep, T, d}), k, pos_d, window)
                             .mean(1);  // [n_kv, T(query), T(key)]
          h2o_all = A.narrow(1, 0, t0).narrow(2, 0, t0).sum(1).to(at::kCPU);
          gt_all = A.narrow(1, t0, T - t0).narrow(2, 0, t0).sum(1).to(at::kCPU);
          n = t0;
        } else {
          gt_all = cs.read(s, layers[li], "attn_next").t().contiguous();
          h2o_all = cs.read(s, layers[li], "attn_cum").t().contiguous();
        }
        pos_c = pos.narrow(0, first, n);
        for (std::int64_t g = 0; g < n_kv; ++g) {
          const at::Tensor gt = gt_all[g].contiguous();
          const at::Tensor gt_top = std::get<1>(gt.topk(n));
          const at::Tensor sc[4] = {learned[li].select(1, g).narrow(0, first, n).contiguous(),
                                    h2o_all[g].contiguous(), pos_c, at::rand({n}, gen)};
          for (std::size_t bi = 0; bi < budgets.size(); ++bi) {
            const std::int64_t k = std::max<std::int64_t>(
                1, static_cast<std::int64_t>(std::lround(budgets[bi] * static_cast<double>(n))));
            for (int m = 0; m < 4; ++m) {
              const auto mr = keep_metrics(sc[m], gt, gt_top, k);
              acc[bi][m] += mr.first;
              acc[bi][4 + m] += mr.second;
              acc_layer[bi][li][m] += mr.first;
              acc_layer[bi][li][4 + m] += mr.second;
            }
          }
        }
        units += static_cast<double>(n_kv);
      }
    }
  }
  nlohmann::json jb = nlohmann::json::array();
  const char* names[4] = {"learned", "h2o", "recency", "random"};
  for (std::size_t bi = 0; bi < budgets.size(); ++bi) {
    policy_budget_metrics m;
    m.budget = budgets[bi];
    double* f[8] = {&m.learned_mass,   &m.h2o_mass,   &m.recency_mass,   &m.random_mass,
                    &m.learned_recall, &m.h2o_recall, &m.recency_recall, &m.random_recall};
    for (int i = 0; i < 8; ++i) *f[i] = acc[bi][i] / std::max(units, 1.0);
    res.budgets.push_back(m);
    nlohmann::json j = {{"keep", m.budget}};
    for (int i = 0; i < 4; ++i) {
      j[names[i]] = {{"mass", *f[i]}, {"recall", *f[4 + i]}};
      nlohmann::json per_layer = nlohmann::json::array();
      for (std::int64_t li = 0; li < L; ++li)
        per_layer.push_back(
            {{"layer", layers[li]},
             {"mass", acc_layer[bi][li][i] /
                          static_cast<double>(std::max<std::size_t>(split.val.size(), 1) * n_kv)},
             {"recall",
              acc_layer[bi][li][4 + i] /
                  static_cast<double>(std::max<std::size_t>(split.val.size(), 1) * n_kv)}});
      j[names[i]]["layers"] = per_layer;
    }
    jb.push_back(j);
  }
  res.report = {{"recipe", p.recipe},
                {"features", res.features},
                {"arch", res.arch},
                {"hidden", res.hidden},
                {"target", h2o ? "attn_cum > median" : "log(" + p.target + " + 1e-6)"},
                {"evaluation",
                 split_eval ? "causal: eviction at each held-out sequence's midpoint among the "
                              "tokens before it; ground truth = attention they receive from the "
                              "later queries (recomputed from q and k); h2o = attention received "
                              "before the midpoint"
                            : "whole sequences ranked; ground truth = attn_next; h2o = attn_cum "
                              "(includes the future attention it is judged on)"},
                {"attn_window", h.attn_window},
                {"train_tokens", split.train_tokens},
                {"val_tokens", split.val_tokens},
                {"epochs_run", res.epochs_run},
                {"steps", res.steps},
                {"validation_loss_init", res.init_val},
                {"validation_loss_best", res.best_val},
                {"train_loss", res.train_loss},
                {"samples_per_s", res.samples_per_s},
                {"device", res.device_used},
                {"budgets", jb}};

  // ---- Output: standardisation folded into the first layer -------------------------------------
  f32_tensor_file file;
  std::vector<at::Tensor> W, b;
  for (std::size_t i = 0; i < best.W.size(); ++i)
    W.push_back(best.W[i].detach().to(at::kCPU)), b.push_back(best.b[i].detach().to(at::kCPU));
  // x_std = (x - mu) / sd:  W0^T x_std + b0 = (W0 / sd)^T x + (b0 - (mu / sd) W0)
  b[0] = b[0] - at::bmm((mu / sd).unsqueeze(1), W[0]).squeeze(1);
  W[0] = W[0] / sd.unsqueeze(2);
  for (std::int64_t li = 0; li < L; ++li) {
    const std::string pre = "layers." + std::to_string(layers[li]) + ".policy.";
    if (W.size() == 1) {
      file.add(pre + "weight", W[0][li].t());  // [n_kv, in]
      file.add(pre + "bias", b[0][li]);
    } else {
      for (std::size_t i = 0; i < W.size(); ++i) {
        file.add(pre + "fc" + std::to_string(i + 1) + ".weight", W[i][li].t());  // [out, in]
        file.add(pre + "fc" + std::to_string(i + 1) + ".bias", b[i][li]);
      }
    }
  }
  nlohmann::json meta = {{"format", policy_format_name},
                         {"version", policy_format_version},
                         {"model", fingerprint_json(h.model_json)},
                         {"recipe", p.recipe},
                         {"features", res.features},
                         {"in_dim", in},
                         {"hidden", res.hidden},
                         {"n_kv_heads", n_kv},
                         {"layers", layers},
                         {"score", h2o ? "logit of P(attn_cum above the sequence median)"
                                       : "predicted log(" + p.target + " + 1e-6)"},
                         {"training",
                          {{"captures", p.captures},
                           {"epochs", p.epochs},
                           {"batch", p.batch},
                           {"lr", p.lr},
                           {"weight_decay", p.weight_decay},
                           {"seed", p.seed},
                           {"precision", p.precision},
                           {"val_fraction", p.val_fraction}}},
                         {"metrics", res.report}};
  file.write(p.out, {{"kvcal.policy", meta.dump()}});
  loop.remove_checkpoint();
  if (p.write_report) {
    const std::string stem = output_stem(p.out);
    res.report_json_path = stem + ".json";
    write_file_atomic(res.report_json_path, res.report.dump(2) + "\n");
    // Plot: per keep budget, mass retained (solid) and recall (dashed) of each scorer.
    std::vector<std::string> xs;
    const char* colors[4] = {"#d62728", "#1f77b4", "#2ca02c", "#7f7f7f"};
    std::vector<svg_series> ser;
    for (int i = 0; i < 4; ++i) {
      ser.push_back({std::string(names[i]) + " mass", colors[i], false, {}});
      ser.push_back({std::string(names[i]) + " recall", colors[i], true, {}});
    }
    for (const auto& b : res.budgets) {
      std::ostringstream k;
      k << b.budget * 100 << "%";
      xs.push_back(k.str());
      const double v[8] = {b.learned_mass, b.learned_recall, b.h2o_mass,    b.h2o_recall,
                           b.recency_mass, b.recency_recall, b.random_mass, b.random_recall};
      for (int i = 0; i < 8; ++i) ser[static_cast<std::size_t>(i)].y.push_back(v[i]);
    }
    res.svg_path = stem + ".svg";
    write_file_atomic(
        res.svg_path,
        line_chart_svg("train-policy: held-out eviction (solid: mass retained, dashed: recall)",
                       "keep budget", "fraction", xs, ser));
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return res;
}

std::string policy_report_table(const policy_train_result& r) {
  std::ostringstream os;
  os << "held-out eviction: future attention mass retained / recall of the true top tokens\n";
  os << std::setw(6) << "keep" << std::setw(17) << "learned" << std::setw(17) << "h2o*"
     << std::setw(17) << "recency" << std::setw(17) << "random"
     << "\n";
  auto cell = [&](double m, double rc) {
    std::ostringstream c;
    c << std::fixed << std::setprecision(3) << m << " / " << rc;
    os << std::setw(17) << c.str();
  };
  for (const auto& b : r.budgets) {
    std::ostringstream k;
    k << b.budget * 100 << "%";
    os << std::setw(6) << k.str();
    cell(b.learned_mass, b.learned_recall);
    cell(b.h2o_mass, b.h2o_recall);
    cell(b.recency_mass, b.recency_recall);
    cell(b.random_mass, b.random_recall);
    os << "\n";
  }
  if (r.causal_eval)
    os << "* eviction at each held-out sequence's midpoint; h2o = attention received so far; "
          "truth = attention from the later queries\n";
  else
    os << "* h2o scores with attn_cum, which includes the future attention it is judged on "
          "(capture q and k for the causal evaluation)\n";
  return os.str();
}

}  // namespace kvcal
