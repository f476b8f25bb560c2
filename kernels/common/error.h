// Error handling for all of kvcal.
//
// Two tiers (DESIGN.md §5):
//   KVCAL_CHECK(cond, msg...)  bad input (files, shapes, options): throws kvcal::error carrying the
//                              message and the source location. `main` catches it once, prints one
//                              line and exits non-zero.
//   KVCAL_ASSERT(cond, msg...) a broken internal invariant: prints and aborts. Never for user input.
//                              Both macros require at least one message argument.
//
// Usage:
//   KVCAL_CHECK(n > 0, path, ": header length ", n, " is not positive");
//   KVCAL_ASSERT(offset <= size, "offset past the end");
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace kvcal {

// Thrown for bad input. what() is the user-facing message; where() is "file:line" for debugging.
class error : public std::runtime_error {
 public:
  error(const std::string& message, const char* file, int line);
  const std::string& where() const { return where_; }

 private:
  std::string where_;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void assert_fail(const char* cond, const std::string& msg, const char* file, int line);
}  // namespace detail

}  // namespace kvcal

#define KVCAL_CHECK(cond, ...)                                                                 \
  do {                                                                                         \
    if (!(cond)) throw ::kvcal::error(::kvcal::detail::concat(__VA_ARGS__), __FILE__, __LINE__); \
  } while (0)

#define KVCAL_FAIL(...) throw ::kvcal::error(::kvcal::detail::concat(__VA_ARGS__), __FILE__, __LINE__)

#define KVCAL_ASSERT(cond, ...)                                                                   \
  do {                                                                                            \
    if (!(cond))                                                                                  \
      ::kvcal::detail::assert_fail(#cond, ::kvcal::detail::concat(__VA_ARGS__), __FILE__, __LINE__); \
  } while (0)
