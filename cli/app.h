// The `kvcal` command line: global flags, the subcommand table, and the one place where errors
// become exit codes.
//
// Exit codes: 0 success; 1 run-time error (bad file, bad data: one line naming the file);
// 2 usage error (unknown option, bad value, unknown or unavailable subcommand).
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace kvcal::cli {

// Runs `kvcal args...` (args excludes the program name). Output goes to `out`; usage and error
// messages to `err`. Never throws.
int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace kvcal::cli
