// What every subcommand shares: its entry in the registry, option parsing with the common flags,
// and the usage-error type that maps to exit code 2.
#pragma once

#include <functional>
#include <iosfwd>
#include <stdexcept>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

namespace kvcal::cli {

namespace po = boost::program_options;

// Bad command line: printed as one line plus a hint, exit code 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct io {
  std::ostream& out;
  std::ostream& err;
};

struct command {
  const char* name;
  const char* summary;
  // nullptr while the subcommand's issue has not landed: listed, but not available.
  int (*run)(const std::vector<std::string>& args, io& io);
  const char* tracked_by;  // "issue #5" for unavailable commands
};

// The registry: every subcommand, in the order `kvcal --help` lists them.
const std::vector<command>& commands();
const command* find_command(const std::string& name);

// Parses `args` for subcommand `name` against `opts` (+ -h/--help, -v/--verbose, -q/--quiet) and
// `pos`. Returns false if --help was given (the help has been printed to io.out). Applies -v/-q
// to the log level. Throws usage_error for anything malformed.
bool parse_options(const std::string& name, const std::string& usage,
                   const po::options_description& opts,
                   const po::positional_options_description& pos,
                   const std::vector<std::string>& args, po::variables_map& vm, io& io);

}  // namespace kvcal::cli
