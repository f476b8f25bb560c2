// The epoch loop train-ae and train-policy share: the options every trainer has, AdamW with the
// cosine schedule, the progress bar, per-block best-weight selection on the held-out score, early
// stopping, and a checkpoint (<out>.ckpt) after every epoch that `resume` continues from.
//
// The trained tensors are batched by block along their first dimension ([G, ...]: train-ae one
// block per AE, train-policy one per layer); the validation score is one value per block ([G]).
//
//   kvcal::train_loop loop(p, "train-ae", options_json, net.params(), best.params(), per_epoch);
//   loop.begin(validate);        // scores the initial weights, or restores <out>.ckpt (p.resume)
//   bool done = loop.run([&](int epoch, std::uint64_t seed) {   // one epoch
//     for (...) loop.step(loss, rows);                           // one AdamW step per minibatch
//   }, validate);
//   loop.summarise(result);
//   if (!done) return result;    // interrupted (p.stop_after_epochs, tests): checkpoint kept
//   ... write the output from the best weights ...; loop.remove_checkpoint();
//
// Checkpoint (torch archive; format of train-ae's since version 1): "options" (the JSON of every
// option that changes the result: resume refuses other values), "w.<i>" / "best.<i>" (current and
// best tensors), "best_score" [G], "state" [epochs done, step, bad epochs, finished], "totals"
// [initial score, best mean score], "train_loss" [epochs], "optimizer" (AdamW state). Resume
// continues after the last whole epoch and ends with the tensors of an uninterrupted run.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace kvcal {

class progress;
struct train_optimizer;  // AdamW (train_loop.cpp keeps libtorch's optimiser headers)

// Options of every trainer. The defaults are train-policy's; ae_train_params sets its own.
struct train_loop_params {
  std::vector<std::string> captures;
  std::string out;
  int epochs = 10;
  std::int64_t batch = 1024;  // tokens per step
  double lr = 1e-3;
  double weight_decay = 1e-2;
  int patience = 3;  // epochs without improvement before stopping (0 = never)
  double val_fraction = 0.2;
  std::int64_t val_max_tokens = 16384;
  std::int64_t shuffle_buffer = 16384;  // tokens
  std::int64_t cache_mb = 2048;         // training rows kept in memory after the first read
  std::string precision = "fp32";       // fp32 | bf16 (mixed: bf16 matmuls in the training forward)
  std::string device = "cpu";           // cpu | cuda | auto
  std::uint64_t seed = 0;
  bool resume = false;  // continue from <out>.ckpt
  bool show_progress = true;
  bool write_report = true;  // report files next to out
  std::string command_line;
  // Tests: stop (as an interruption would, checkpoint kept) after this many epochs (0 = never).
  int stop_after_epochs = 0;
};

// What every trainer reports about its run (ae_train_result and policy_train_result add theirs).
struct train_result {
  int epochs_run = 0;
  std::int64_t steps = 0;
  std::vector<double> train_loss;     // mean training loss per epoch
  double init_val = 0, best_val = 0;  // mean validation score over blocks: start, best per block
  bool early_stopped = false;
  bool interrupted = false;  // stopped by stop_after_epochs (checkpoint kept, no output)
  std::string device_used, report_json_path, svg_path;
  double seconds = 0, samples_per_s = 0;  // samples: training tokens per second of training
  nlohmann::json report;                  // what <stem>.json holds
};

// Checks the shared options (errors name the option); `name` is the subcommand ("train-ae").
void validate_loop_params(const train_loop_params& p, const std::string& name);
// The shared options that change the result, for the checkpoint's "options".
nlohmann::json loop_options_json(const train_loop_params& p);
// The matmul dtype of the training forward for --precision.
at::ScalarType compute_dtype(const train_loop_params& p);

class train_loop {
 public:
  // params: the trained tensors (requires_grad, updated in place); best: same-shaped tensors that
  // receive each block's best weights. steps_per_epoch fixes the learning-rate schedule.
  train_loop(const train_loop_params& p, std::string name, std::string options_json,
             std::vector<at::Tensor> params, std::vector<at::Tensor> best,
             std::int64_t steps_per_epoch);
  ~train_loop();
  train_loop(const train_loop&) = delete;
  train_loop& operator=(const train_loop&) = delete;

  // Fresh: scores the initial weights (validate() -> [G]). With p.resume: restores the checkpoint
  // (an error when there is none or it was written with other options).
  void begin(const std::function<at::Tensor()>& validate);
  // Runs the remaining epochs: epoch_fn(epoch, seed) calls step() per minibatch, then the weights
  // are scored, each block keeps its best, early stopping is decided and the checkpoint written.
  // Returns false when stopped by p.stop_after_epochs before the end.
  bool run(const std::function<void(int epoch, std::uint64_t seed)>& epoch_fn,
           const std::function<at::Tensor()>& validate);
  // One AdamW step on `loss` (a scalar) at the scheduled learning rate; `samples`: tokens in it.
  void step(const at::Tensor& loss, std::int64_t samples);
  void remove_checkpoint() const;
  // The run's figures into r (epochs, steps, losses, scores, stop reason, speed).
  void summarise(train_result& r) const;

  std::int64_t steps() const { return step_; }
  int epochs_run() const { return epochs_done_; }
  bool early_stopped() const { return early_stopped_; }
  double init_val() const { return init_val_; }
  // Mean of the per-block best scores.
  double best_val() const;
  const at::Tensor& best_score() const { return best_score_; }  // [G] f32
  const std::vector<double>& train_loss() const { return train_loss_; }
  double samples_per_s() const { return samples_per_s_; }
  const std::string& checkpoint_path() const { return ckpt_; }

 private:
  void save_checkpoint() const;
  void load_checkpoint();

  const train_loop_params& p_;
  std::string name_, options_, ckpt_;
  std::vector<at::Tensor> params_, best_;
  std::unique_ptr<train_optimizer> opt_;
  std::int64_t total_steps_;
  at::Tensor best_score_;  // [G]
  double init_val_ = 0, best_total_ = 0;
  int epochs_done_ = 0, bad_epochs_ = 0;
  std::int64_t step_ = 0, samples_ = 0;
  bool finished_ = false, early_stopped_ = false, interrupted_ = false;
  std::vector<double> train_loss_;
  double samples_per_s_ = 0;
  // Within an epoch: the loss sum and steps (for the epoch's mean), the bar.
  double epoch_loss_ = 0;
  std::int64_t epoch_steps_ = 0;
  int epoch_ = 0;
  progress* bar_ = nullptr;
};

}  // namespace kvcal
