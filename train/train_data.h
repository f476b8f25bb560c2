// Training data for train-ae / train-policy: a set of captures of one model (calibrate/
// capture_reader.h), split by sequence into training and held-out validation sets, read one
// sequence at a time (every value checked finite), and a seeded shuffle buffer that turns the
// training sequences into minibatches of token rows.
//
//   kvcal::capture_set cs({"a.h5", "b.h5"});               // same model, same layers, not empty
//   kvcal::sequence_split s = cs.split(0.1, 16384, seed);  // held-out sequences
//   at::Tensor k = cs.read(s.train[0], 3, "k");             // [len, n_kv_heads, head_dim] f32
//   kvcal::row_shuffler sh(s.train, loader, 8192, 256, seed + epoch);
//   while (sh.next(batch)) ...                              // batch: [<= 256, F]
//
// Determinism: the sequence order and the row permutation depend only on (seed, epoch), so a
// resumed run sees exactly the batches an uninterrupted one would.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "calibrate/capture_reader.h"

namespace kvcal {

// One sequence of one capture: rows [row0, row0 + len).
struct seq_ref {
  int file = 0;
  std::int64_t row0 = 0, len = 0;
  std::int64_t index = 0;  // sequence index inside its file
};

struct sequence_split {
  std::vector<seq_ref> train, val;
  std::int64_t train_tokens = 0, val_tokens = 0;
};

class capture_set {
 public:
  // Opens every capture; refuses an empty list, an empty capture, captures of different models
  // (naming both fingerprints) or recording different layers.
  explicit capture_set(const std::vector<std::string>& paths);

  const capture_header& header() const { return readers_[0]->header(); }
  const std::string& model_json() const { return header().model_json; }
  const std::vector<int>& layers() const { return header().layers; }
  std::size_t n_files() const { return readers_.size(); }
  const capture_reader& reader(std::size_t i) const { return *readers_[i]; }
  const std::vector<seq_ref>& sequences() const { return seqs_; }
  std::int64_t n_tokens() const { return n_tokens_; }
  // The model's sliding attention window (0 = none) as the captures record it; -1 when none of
  // them records it (written before it was) and the model type can have one (mistral).
  std::int64_t sliding_window() const;

  // Whether every capture recorded `item`; if not, throws "<path>: the capture has no '<item>'
  // (record it with kvcal capture --record ...,<item>): <why>".
  void require(capture_item item, const std::string& why) const;

  // Held-out sequences: a seeded choice of ceil(val_fraction x sequences) sequences (at least one,
  // at most val_max_tokens tokens; never all: at least one training sequence stays).
  sequence_split split(double val_fraction, std::int64_t val_max_tokens, std::uint64_t seed) const;

  // Dataset `name` of `layer` for one sequence: [len, inner...] float32 on the CPU. NaN / Inf is
  // an error naming the file, layer, dataset and row.
  at::Tensor read(const seq_ref& s, int layer, const std::string& name) const;
  // Token positions of a sequence: [len] int64.
  at::Tensor positions(const seq_ref& s) const;

 private:
  std::vector<std::unique_ptr<capture_reader>> readers_;
  std::vector<seq_ref> seqs_;
  std::int64_t n_tokens_ = 0;
};

// Loads the rows of one sequence as [len, F] float32 (F fixed by the loader).
using row_loader = std::function<at::Tensor(const seq_ref&)>;

// Streams the rows of `seqs` in a seeded order: sequences are shuffled, loaded until the buffer
// holds at least `buffer_rows` rows, the buffer is permuted and cut into batches of `batch` rows;
// the rows left over join the next buffer. The last batch of the epoch may be smaller.
class row_shuffler {
 public:
  row_shuffler(std::vector<seq_ref> seqs, row_loader load, std::int64_t buffer_rows,
               std::int64_t batch, std::uint64_t seed);
  // Next batch into `out` ([n, F]); false at the end of the epoch.
  bool next(at::Tensor& out);
  // Number of batches of the epoch (known from the sequence lengths).
  std::int64_t n_batches() const { return n_batches_; }

 private:
  std::vector<seq_ref> seqs_;
  row_loader load_;
  std::int64_t buffer_rows_, batch_, n_batches_ = 0;
  std::size_t next_seq_ = 0;
  at::Tensor buf_;  // permuted rows not yet handed out
  std::int64_t buf_pos_ = 0;
  std::mt19937_64 rng_;
};

// Wraps `load` with a memory cache: the rows of a sequence are kept (up to `budget_bytes` in all)
// so later epochs skip the HDF5 reads and decompression. The returned tensors are shared: callers
// must not modify them in place. budget_bytes 0 = no cache.
row_loader cached_loader(row_loader load, std::int64_t budget_bytes);

// Groups `seqs` (in a seeded order) into minibatches of whole sequences holding at most `batch`
// tokens (at least one sequence each): for losses that need every token of a sequence.
std::vector<std::vector<seq_ref>> sequence_batches(std::vector<seq_ref> seqs, std::int64_t batch,
                                                   std::uint64_t seed);

// A seed for epoch `epoch` of a run seeded with `seed` (splitmix64 of both).
std::uint64_t epoch_seed(std::uint64_t seed, std::int64_t epoch);

}  // namespace kvcal
