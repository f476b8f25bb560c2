#include "kernels/common/log.h"

#include <atomic>
#include <cstdio>
#include <mutex>

namespace kvcal {
namespace {
std::atomic<int> g_level{static_cast<int>(log_level::info)};
std::mutex g_mutex;
std::string g_progress_line;  // guarded by g_mutex
}  // namespace

void set_log_level(log_level level) { g_level = static_cast<int>(level); }
log_level get_log_level() { return static_cast<log_level>(g_level.load()); }

void log_line(log_level level, const std::string& line) {
  if (static_cast<int>(level) > g_level.load() || level == log_level::quiet) return;
  const char* prefix = level == log_level::error  ? "kvcal: error: "
                       : level == log_level::warn ? "kvcal: warning: "
                                                  : "kvcal: ";
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_progress_line.empty()) std::fputs("\r\033[2K", stderr);
  std::fprintf(stderr, "%s%s\n", prefix, line.c_str());
  if (!g_progress_line.empty()) std::fputs(g_progress_line.c_str(), stderr);
  std::fflush(stderr);
}

namespace detail {
void set_progress_line(const std::string& line) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_progress_line = line;
}
}  // namespace detail

}  // namespace kvcal
