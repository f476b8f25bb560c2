#include "kernels/common/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "kernels/common/log.h"

namespace kvcal {
namespace {
int g_force_tty = -1;
constexpr double kTtyInterval = 0.1;     // seconds between redraws on a terminal
constexpr double kPlainInterval = 10.0;  // seconds between lines in logs
}  // namespace

void progress::force_tty(int tty) { g_force_tty = tty; }

progress::progress(std::string label, std::uint64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
  tty_ = g_force_tty >= 0 ? g_force_tty == 1 : isatty(fileno(stderr)) == 1;
  enabled_ = get_log_level() >= log_level::info;
  plain_interval_ = kPlainInterval;
}

progress::~progress() {
  if (!finished_) finish();
}

void progress::set_note(std::string note) { note_ = std::move(note); }

void progress::advance(std::uint64_t n) {
  count_ += n;
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_draw_).count();
  if (since >= (tty_ ? kTtyInterval : plain_interval_)) {
    last_draw_ = now;
    draw(false);
  }
}

void progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (enabled_) draw(true);
}

std::string progress::format_count(double v) {
  const char* suffix[] = {"", "k", "M", "G", "T"};
  int i = 0;
  while (std::fabs(v) >= 1000.0 && i < 4) {
    v /= 1000.0;
    ++i;
  }
  char buf[32];
  if (i == 0)
    std::snprintf(buf, sizeof buf, "%.0f", v);
  else
    std::snprintf(buf, sizeof buf, v < 10 ? "%.2f%s" : v < 100 ? "%.1f%s" : "%.0f%s", v, suffix[i]);
  return buf;
}

std::string progress::format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  long t = std::lround(s);
  char buf[32];
  if (t < 60)
    std::snprintf(buf, sizeof buf, "%lds", t);
  else if (t < 3600)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  return buf;
}

std::string progress::render(double elapsed, bool final_line) const {
  std::string s = label_ + "  ";
  double rate = elapsed > 0 ? static_cast<double>(count_) / elapsed : 0.0;
  if (total_ > 0) {
    double frac = std::min(1.0, static_cast<double>(count_) / static_cast<double>(total_));
    if (tty_) {
      constexpr int width = 24;
      int filled = static_cast<int>(frac * width);
      s += "[" + std::string(filled, '#') + std::string(width - filled, '.') + "] ";
    }
    char pct[16];
    std::snprintf(pct, sizeof pct, "%3.0f%% ", frac * 100.0);
    s += pct;
    s += format_count(static_cast<double>(count_)) + "/" + format_count(static_cast<double>(total_));
  } else {
    s += format_count(static_cast<double>(count_));
  }
  s += " " + unit_ + "  " + format_count(rate) + " " + unit_ + "/s";
  if (final_line) {
    s += "  in " + format_duration(elapsed);
  } else if (total_ > 0 && rate > 0) {
    double left = static_cast<double>(total_ > count_ ? total_ - count_ : 0) / rate;
    s += "  ETA " + format_duration(left);
  }
  if (!note_.empty()) s += "  " + note_;
  return s;
}

void progress::draw(bool final_line) {
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::string line = render(elapsed, final_line);
  if (tty_) {
    std::fprintf(stderr, "\r\033[2K%s%s", line.c_str(), final_line ? "\n" : "");
    std::fflush(stderr);
    detail::set_progress_line(final_line ? std::string() : "\r\033[2K" + line);
  } else {
    log_line(log_level::info, line);
  }
}

}  // namespace kvcal
