// `kvcal capture`: run a model over text files and stream the activations calibration needs
// (pre-RoPE K, V, Q, hidden state, attention statistics) into a capture file
// (calibrate/capture_format.h, docs/formats/capture.md).
//
// The run:
//   1. each file is read (UTF-8 checked), tokenized with the model's tokenizer as one document
//      (the tokenizer's post-processor applied, e.g. BOS), followed by EOS unless it already ends
//      with it; the documents are joined into one stream;
//   2. the stream is cut into sequences of seq_len tokens (a shorter remainder becomes the last
//      sequence); seed != 0 shuffles the order of the full sequences; max_tokens keeps the first
//      max_tokens tokens of that order (cutting the last sequence kept);
//   3. batches of `batch` sequences of equal length are run through the model from an empty cache
//      (positions restart at 0), logits off, with a layer hook that converts what is recorded and
//      copies it to host buffers (pinned, asynchronous on CUDA); a writer thread writes and commits
//      a batch while the model computes the next, its whole chunks compressed on write_threads
//      threads and stored directly (calibrate/h5_chunk_writer.h) (two buffer sets: memory is
//      bounded by 2 x batch x seq_len tokens whatever max_tokens is);
//   4. the file is written as OUT.partial and renamed to OUT when complete. resume continues an
//      interrupted OUT.partial after its last complete sequence, refusing (and naming every
//      difference) when model, tokenizer, inputs or content options differ.
//
//   kvcal::capture_params p;
//   p.model_dir = "models/llama"; p.text_files = {"corpus.txt"}; p.out = "cap.h5";
//   kvcal::capture_result r = kvcal::run_capture(p);
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "calibrate/capture_format.h"

namespace kvcal {

struct capture_params {
  std::string model_dir;
  std::vector<std::string> text_files;
  std::string out;
  std::int64_t seq_len = 0;     // 0 = min(2048, the model's max_position_embeddings)
  std::int64_t max_tokens = 0;  // 0 = every token of the inputs
  std::int64_t batch = 1;
  std::string device = "cpu";  // cpu | cuda | cuda:N
  std::string dtype = "auto";  // compute: fp32 | bf16 | fp16; auto = fp32 on CPU, bf16 on CUDA
  std::string store = "auto";  // stored activations: float16 | float32; auto = float32 when
                               // computing in fp32, else float16
  std::string layers = "all";  // all | comma list of indices and ranges (0,2,5-7)
  std::string record = "k,v,attn";
  std::int64_t attn_window = 64;  // W of attn_next
  bool compress = true;           // shuffle + deflate level 1
  int write_threads = 0;          // chunk compression threads; 0 = hardware threads - 1 (>= 1)
  bool resume = false;
  std::uint64_t seed = 0;  // 0 = sequences in input order
  std::string command_line;
  bool show_progress = true;

  // For tests: stop (leaving OUT.partial, as an interruption would) once this many sequences are
  // committed (0 = never), a callback after every commit (total committed sequences), and one on
  // the writer thread after a batch's rows are written but before their commit (the total the
  // commit will make): an interruption there leaves written, uncommitted rows.
  std::int64_t stop_after_sequences = 0;
  std::function<void(std::int64_t)> maybe_on_commit;
  std::function<void(std::int64_t)> maybe_before_commit;
};

struct capture_result {
  std::int64_t tokens = 0;     // in the file
  std::int64_t sequences = 0;  // in the file
  std::int64_t resumed_from_sequence = 0;
  std::int64_t file_bytes = 0;
  bool complete = false;
  double seconds = 0.0;  // the whole run
  // Where the time went: reading + tokenizing the inputs, loading the model, the capture loop
  // (first forward to the last commit), closing + fsync + rename (finish), and the part of the
  // loop the forward thread spent waiting for the writer thread (0 when writing keeps up).
  double tokenize_seconds = 0.0, load_seconds = 0.0, loop_seconds = 0.0, finish_seconds = 0.0,
         writer_wait_seconds = 0.0;
  std::int64_t loop_tokens = 0;      // tokens captured by the loop (not those resumed from)
  std::int64_t loop_file_bytes = 0;  // file growth during the loop
  int write_threads = 0;
};

capture_result run_capture(const capture_params& p);

// Option parsing shared with the CLI (errors name the option and list what is accepted).
std::vector<capture_item> parse_record_list(const std::string& list);
std::vector<int> parse_layer_list(const std::string& list, std::int64_t n_layers);
// Offset of the first byte that is not valid UTF-8, or -1 if `bytes` is valid.
std::int64_t find_invalid_utf8(const std::string& bytes);

}  // namespace kvcal
