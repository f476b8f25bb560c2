// A tiny capture of the reference model kvcal-ref-v1 (data/models/) and a quick policy training
// on it, shared by the tests that export an eviction preset from them (test_calibrated_eviction,
// test_llama_gpu).
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

#include "calibrate/capture.h"
#include "tests/test_util.h"
#include "train/policy_train.h"

namespace kvcal::test {

// The capture's sequence length (tokens per sequence).
constexpr std::int64_t ref_capture_seq_len = 64;

// 4 sequences of 64 tokens from the start of data/calib.txt, fp32 activations (k, hidden and
// attention with window 16), written to dir/cap.h5 (the text slice to dir/calib-slice.txt);
// returns the capture's path.
inline std::string tiny_ref_capture(const scratch_dir& dir) {
  std::ifstream in(std::string(KVCAL_SOURCE_DIR) + "/data/calib.txt", std::ios::binary);
  std::string text(6000, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  const std::string txt = dir.file("calib-slice.txt");
  write_bytes(txt, text);
  capture_params p;
  p.model_dir = std::string(KVCAL_SOURCE_DIR) + "/data/models/kvcal-ref-v1";
  p.text_files = {txt};
  p.out = dir.file("cap.h5");
  p.seq_len = ref_capture_seq_len;
  p.max_tokens = 4 * ref_capture_seq_len;
  p.batch = 4;
  p.store = "float32";
  p.record = "k,hidden,attn";
  p.attn_window = 16;
  p.show_progress = false;
  p.command_line = "test";
  run_capture(p);
  return p.out;
}

// train-policy on the capture `cap` (recipe, one hidden layer of `hidden`, 2 epochs of batch 64,
// quiet, no report), the network written to `out`.
inline void train_ref_policy(const std::string& cap, const std::string& out,
                             const std::string& recipe, int hidden) {
  policy_train_params tp;
  tp.captures = {cap};
  tp.out = out;
  tp.recipe = recipe;
  tp.hidden = {hidden};
  tp.epochs = 2;
  tp.batch = 64;
  tp.show_progress = false;
  tp.write_report = false;
  run_train_policy(tp);
}

}  // namespace kvcal::test
