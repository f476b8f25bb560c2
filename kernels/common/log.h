// Leveled logging to stderr, shared by every module.
//
// The level is process-wide: the CLI sets it from -q / -v. Messages at or below the current level
// are printed as "kvcal: <message>" (warnings and errors prefixed as such). Logging first clears a
// progress line that may be drawn on the terminal, so the two never interleave.
//
//   kvcal::log_info("loaded ", n, " tensors from ", path);
#pragma once

#include "kernels/common/error.h"

namespace kvcal {

enum class log_level { quiet = 0, error = 1, warn = 2, info = 3, debug = 4 };

void set_log_level(log_level level);
log_level get_log_level();
// Writes one complete line to stderr (thread-safe), unless `level` is above the current level.
void log_line(log_level level, const std::string& line);

template <typename... Args>
void log_error(const Args&... a) { log_line(log_level::error, detail::concat(a...)); }
template <typename... Args>
void log_warn(const Args&... a) { log_line(log_level::warn, detail::concat(a...)); }
template <typename... Args>
void log_info(const Args&... a) { log_line(log_level::info, detail::concat(a...)); }
template <typename... Args>
void log_debug(const Args&... a) { log_line(log_level::debug, detail::concat(a...)); }

namespace detail {
// Used by the progress reporter: the terminal line it currently occupies (empty when none), so
// that log_line can clear it and redraw it after the message.
void set_progress_line(const std::string& line);
}  // namespace detail

}  // namespace kvcal
