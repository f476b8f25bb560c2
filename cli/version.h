// `kvcal --version`: version, git commit, supported on-disk format versions, build and devices.
#pragma once

#include <iosfwd>

namespace kvcal::cli {
void print_version(std::ostream& out);
}  // namespace kvcal::cli
