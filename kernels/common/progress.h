// Progress reporting for long work (capture, fit-pca, training, eval).
//
// On a terminal it redraws one line: "label  [#####.....]  1.2M/4.0M tok  35.1k tok/s  ETA 1m20s".
// When stderr is not a terminal (CI logs, files) it prints a plain line every `plain_interval`
// seconds and one at the end. Silent when the log level is quiet. Thread-compatible: call
// advance() from one thread.
//
//   kvcal::progress bar("capture", total_tokens, "tok");
//   for (...) { ...; bar.advance(n); }
//   bar.finish();
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace kvcal {

class progress {
 public:
  // total == 0 means unknown: no bar and no ETA, only count and rate.
  progress(std::string label, std::uint64_t total, std::string unit);
  ~progress();
  progress(const progress&) = delete;
  progress& operator=(const progress&) = delete;

  void advance(std::uint64_t n = 1);
  // Extra text shown after the rate (e.g. "loss 2.31", "412 MB written").
  void set_note(std::string note);
  // Prints the final line (count, mean rate, elapsed). Called by the destructor if not done.
  void finish();

  std::uint64_t count() const { return count_; }

  // Formatting helpers, exposed for tests.
  static std::string format_count(double v);     // 1234567 -> "1.23M"
  static std::string format_duration(double s);  // 83.2 -> "1m23s"
  std::string render(double elapsed_s, bool final_line) const;

  // Overrides terminal detection (tests, --progress=plain); -1 = auto.
  static void force_tty(int tty);

 private:
  void draw(bool final_line);

  std::string label_, unit_, note_;
  std::uint64_t total_, count_ = 0;
  std::chrono::steady_clock::time_point start_, last_draw_;
  bool tty_, finished_ = false, enabled_;
  double plain_interval_;
};

}  // namespace kvcal
