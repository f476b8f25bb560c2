#include "train/train_loop.h"

#include <ATen/core/grad_mode.h>

#include <torch/optim/adamw.h>
#include <torch/serialize/archive.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iomanip>
#include <sstream>
#include <utility>

#include "kernels/common/error.h"
#include "kernels/common/log.h"
#include "kernels/common/progress.h"
#include "runtime/io/atomic_file.h"
#include "train/train_common.h"
#include "train/train_data.h"

namespace kvcal {

struct train_optimizer {
  torch::optim::AdamW adamw;
};

namespace {

at::Tensor string_tensor(const std::string& s) {
  at::Tensor t = at::empty({static_cast<std::int64_t>(s.size())}, at::kByte);
  if (!s.empty()) std::memcpy(t.data_ptr<std::uint8_t>(), s.data(), s.size());
  return t;
}

std::string tensor_string(const at::Tensor& t) {
  at::Tensor c = t.contiguous().to(at::kCPU);
  return std::string(reinterpret_cast<const char*>(c.data_ptr<std::uint8_t>()),
                     static_cast<std::size_t>(c.numel()));
}

}  // namespace

void validate_loop_params(const train_loop_params& p, const std::string& name) {
  KVCAL_CHECK(!p.captures.empty(), name, ": no --capture file");
  KVCAL_CHECK(!p.out.empty(), name, ": no --out file");
  KVCAL_CHECK(p.epochs >= 1, "--epochs must be >= 1");
  KVCAL_CHECK(p.batch >= 1, "--batch must be >= 1");
  KVCAL_CHECK(p.lr > 0 && std::isfinite(p.lr), "--lr must be positive");
  KVCAL_CHECK(p.weight_decay >= 0, "--weight-decay must be >= 0");
  KVCAL_CHECK(p.patience >= 0, "--patience must be >= 0");
  KVCAL_CHECK(p.val_fraction > 0 && p.val_fraction < 1, "--val-fraction must be in (0, 1)");
  KVCAL_CHECK(p.val_max_tokens >= 1, "--val-max-tokens must be >= 1");
  KVCAL_CHECK(p.shuffle_buffer >= 1, "--shuffle-buffer must be >= 1");
  KVCAL_CHECK(p.cache_mb >= 0, "--cache-mb must be >= 0");
  KVCAL_CHECK(p.precision == "fp32" || p.precision == "bf16", "--precision: '", p.precision,
              "' is not fp32 or bf16");
  KVCAL_CHECK(p.device == "cpu" || p.device == "auto" || p.device.rfind("cuda", 0) == 0,
              "--device: '", p.device, "' is not cpu, cuda or auto");
}

nlohmann::json loop_options_json(const train_loop_params& p) {
  return {{"captures", p.captures},
          {"precision", p.precision},
          {"epochs", p.epochs},
          {"batch", p.batch},
          {"lr", p.lr},
          {"weight_decay", p.weight_decay},
          {"patience", p.patience},
          {"val_fraction", p.val_fraction},
          {"val_max_tokens", p.val_max_tokens},
          {"shuffle_buffer", p.shuffle_buffer},
          {"seed", p.seed}};
}

at::ScalarType compute_dtype(const train_loop_params& p) {
  return p.precision == "bf16" ? at::kBFloat16 : at::kFloat;
}

train_loop::train_loop(const train_loop_params& p, std::string name, std::string options_json,
                       std::vector<at::Tensor> params, std::vector<at::Tensor> best,
                       std::int64_t steps_per_epoch)
    : p_(p),
      name_(std::move(name)),
      options_(std::move(options_json)),
      ckpt_(p.out + ".ckpt"),
      params_(std::move(params)),
      best_(std::move(best)),
      opt_(new train_optimizer{torch::optim::AdamW(
          params_, torch::optim::AdamWOptions(p.lr).weight_decay(p.weight_decay))}),
      total_steps_(steps_per_epoch * p.epochs) {
  KVCAL_ASSERT(params_.size() == best_.size(), "train_loop: params and best differ in count");
}

train_loop::~train_loop() = default;

double train_loop::best_val() const {
  return best_score_.mean().item<double>();
}

void train_loop::begin(const std::function<at::Tensor()>& validate) {
  if (p_.resume) {
    load_checkpoint();
    return;
  }
  best_score_ = validate();
  best_total_ = best_score_.mean().item<double>();
  init_val_ = best_total_;
}

void train_loop::load_checkpoint() {
  std::FILE* f = std::fopen(ckpt_.c_str(), "rb");
  KVCAL_CHECK(f != nullptr, "--resume: no checkpoint ", ckpt_, " (nothing to resume)");
  std::fclose(f);
  torch::serialize::InputArchive ar;
  ar.load_from(ckpt_);
  // A fresh tensor per key: reading into a defined tensor would set_() it in place.
  auto get = [&](const std::string& key) {
    at::Tensor t;
    ar.read(key, t);
    return t;
  };
  const std::string saved = tensor_string(get("options"));
  KVCAL_CHECK(saved == options_, ckpt_,
              ": written with other options; run without --resume or with the same options:\n  "
              "checkpoint: ",
              saved, "\n  now:        ", options_);
  {
    at::NoGradGuard ng;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      params_[i].copy_(get("w." + std::to_string(i)));
      best_[i].copy_(get("best." + std::to_string(i)));
    }
  }
  best_score_ = get("best_score");
  at::Tensor t = get("state");  // epoch, step, bad_epochs, finished
  epochs_done_ = static_cast<int>(t[0].item<std::int64_t>());
  step_ = t[1].item<std::int64_t>();
  bad_epochs_ = static_cast<int>(t[2].item<std::int64_t>());
  finished_ = t[3].item<std::int64_t>() != 0;
  t = get("totals");  // init_val, best_total
  init_val_ = t[0].item<double>();
  best_total_ = t[1].item<double>();
  t = get("train_loss");
  for (std::int64_t i = 0; i < t.numel(); ++i) train_loss_.push_back(t[i].item<double>());
  torch::serialize::InputArchive oa;
  ar.read("optimizer", oa);
  opt_->adamw.load(oa);
  log_info(name_, ": resuming ", ckpt_, " after epoch ", epochs_done_, " (step ", step_, ")");
}

void train_loop::save_checkpoint() const {
  torch::serialize::OutputArchive ar;
  ar.write("options", string_tensor(options_));
  for (std::size_t i = 0; i < params_.size(); ++i) {
    ar.write("w." + std::to_string(i), params_[i].detach().to(at::kCPU));
    ar.write("best." + std::to_string(i), best_[i].detach().to(at::kCPU));
  }
  ar.write("best_score", best_score_);
  ar.write("state", at::tensor(std::vector<std::int64_t>{epochs_done_, step_, bad_epochs_,
                                                         finished_ ? 1 : 0}));
  ar.write("totals", at::tensor(std::vector<double>{init_val_, best_total_}));
  ar.write("train_loss", at::tensor(train_loss_, at::kDouble));
  torch::serialize::OutputArchive oa;
  opt_->adamw.save(oa);
  ar.write("optimizer", oa);
  atomic_output out(ckpt_);
  ar.save_to(out.temp_path());
  out.commit();
}

void train_loop::remove_checkpoint() const {
  std::remove(ckpt_.c_str());
}

void train_loop::step(const at::Tensor& loss, std::int64_t samples) {
  const double value = loss.item<double>();
  KVCAL_CHECK(std::isfinite(value), name_, ": the loss is not finite at step ", step_,
              " (lower --lr?)");
  const double lr = cosine_lr(step_, total_steps_, p_.lr);
  for (auto& g : opt_->adamw.param_groups())
    static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
  opt_->adamw.zero_grad();
  loss.backward();
  opt_->adamw.step();
  ++step_;
  samples_ += samples;
  epoch_loss_ += value;
  ++epoch_steps_;
  if (bar_ != nullptr) {
    std::ostringstream note;
    note << "epoch " << epoch_ + 1 << "/" << p_.epochs << " loss " << std::setprecision(4) << value;
    bar_->set_note(note.str());
    bar_->advance(1);
  }
}

bool train_loop::run(const std::function<void(int epoch, std::uint64_t seed)>& epoch_fn,
                     const std::function<at::Tensor()>& validate) {
  const auto t0 = std::chrono::steady_clock::now();
  const int epoch0 = epochs_done_;
  progress bar(name_, p_.show_progress ? static_cast<std::uint64_t>(total_steps_ - step_) : 0,
               "step");
  bar_ = p_.show_progress ? &bar : nullptr;
  for (int epoch = epoch0; epoch < p_.epochs && !finished_; ++epoch) {
    epoch_ = epoch;
    epoch_loss_ = 0;
    epoch_steps_ = 0;
    epoch_fn(epoch, epoch_seed(p_.seed, epoch));
    train_loss_.push_back(epoch_steps_ > 0 ? epoch_loss_ / static_cast<double>(epoch_steps_) : 0.0);
    // Each block keeps its best weights.
    const at::Tensor score = validate();
    {
      at::NoGradGuard ng;
      for (std::size_t i = 0; i < params_.size(); ++i) {
        std::vector<std::int64_t> shp(static_cast<std::size_t>(params_[i].dim()), 1);
        shp[0] = score.size(0);
        const at::Tensor better = (score < best_score_).to(params_[i].device()).view(shp);
        best_[i].copy_(at::where(better, params_[i], best_[i]));
      }
    }
    best_score_ = at::minimum(score, best_score_);
    const double total = score.mean().item<double>();
    if (total < best_total_ * (1 - 1e-4)) {
      best_total_ = total;
      bad_epochs_ = 0;
    } else {
      ++bad_epochs_;
    }
    log_info(name_, ": epoch ", epoch + 1, ": train loss ", train_loss_.back(), ", validation ",
             total, " (best per block: ", best_val(), ")");
    if (p_.patience > 0 && bad_epochs_ >= p_.patience) {
      finished_ = early_stopped_ = true;
      log_info(name_, ": early stop after epoch ", epoch + 1, " (no improvement for ", p_.patience,
               " epochs)");
    }
    if (epoch + 1 == p_.epochs) finished_ = true;
    epochs_done_ = epoch + 1;
    save_checkpoint();
    if (p_.stop_after_epochs > 0 && epoch + 1 - epoch0 >= p_.stop_after_epochs && !finished_) {
      interrupted_ = true;
      break;
    }
  }
  bar_ = nullptr;
  if (!interrupted_) bar.finish();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  samples_per_s_ = s > 0 ? static_cast<double>(samples_) / s : 0;
  return !interrupted_;
}

void train_loop::summarise(train_result& r) const {
  r.epochs_run = epochs_done_;
  r.steps = step_;
  r.train_loss = train_loss_;
  r.init_val = init_val_;
  r.best_val = best_val();
  r.early_stopped = early_stopped_;
  r.interrupted = interrupted_;
  r.samples_per_s = samples_per_s_;
}

}  // namespace kvcal
