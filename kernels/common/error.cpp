#include "kernels/common/error.h"

#include <cstdio>
#include <cstdlib>

namespace kvcal {

error::error(const std::string& message, const char* file, int line)
    : std::runtime_error(message), where_(detail::concat(file, ":", line)) {}

namespace detail {
void assert_fail(const char* cond, const std::string& msg, const char* file, int line) {
  std::fprintf(stderr, "kvcal: internal error: assertion `%s` failed at %s:%d%s%s\n", cond, file,
               line, msg.empty() ? "" : ": ", msg.c_str());
  std::fflush(stderr);
  std::abort();
}
}  // namespace detail

}  // namespace kvcal
