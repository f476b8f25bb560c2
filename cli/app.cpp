#include "cli/app.h"

#include <exception>
#include <ostream>

#include "cli/command.h"
#include "cli/version.h"
#include "kernels/common/error.h"
#include "kernels/common/log.h"

namespace kvcal::cli {
namespace {

void print_help(std::ostream& out) {
  out << "kvcal: calibrated KV-cache compression for Llama-family models\n\n"
         "Usage: kvcal [-v|-q] <command> [options]\n"
         "       kvcal <command> --help     options of one command, with defaults\n"
         "       kvcal --version            version, commit, formats, devices\n\n"
         "Commands:\n";
  for (const auto& c : commands()) {
    std::string name = c.name;
    name.resize(14, ' ');
    out << "  " << name << c.summary;
    if (!c.run) out << "  [not available in this build: " << c.tracked_by << "]";
    out << "\n";
  }
  out << "\nExit status: 0 ok, 1 run-time error, 2 usage error.\n";
}

// The first line of an exception message: libtorch appends multi-line backtraces.
std::string first_line(const char* what) {
  std::string s = what ? what : "unknown error";
  auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

}  // namespace

int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  io io{out, err};
  std::size_t i = 0;
  // Global flags before the command.
  for (; i < args.size() && !args[i].empty() && args[i][0] == '-'; ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      print_help(out);
      return 0;
    }
    if (a == "-V" || a == "--version") {
      print_version(out);
      return 0;
    }
    if (a == "-v" || a == "--verbose") {
      set_log_level(log_level::debug);
    } else if (a == "-q" || a == "--quiet") {
      set_log_level(log_level::error);
    } else {
      err << "kvcal: unknown option '" << a << "'\nTry 'kvcal --help'.\n";
      return 2;
    }
  }
  if (i == args.size()) {
    print_help(err);
    return 2;
  }
  const std::string name = args[i];
  const command* cmd = find_command(name);
  if (!cmd) {
    err << "kvcal: unknown command '" << name << "'\nTry 'kvcal --help'.\n";
    return 2;
  }
  std::vector<std::string> rest(args.begin() + static_cast<long>(i) + 1, args.end());
  if (!cmd->run) {
    bool help = false;
    for (const auto& a : rest) help = help || a == "-h" || a == "--help";
    std::ostream& os = help ? out : err;
    os << "kvcal " << name << ": " << cmd->summary << "\n"
       << "kvcal " << name << ": not available in this build (" << cmd->tracked_by << ")\n";
    return help ? 0 : 2;
  }
  try {
    return cmd->run(rest, io);
  } catch (const usage_error& e) {
    err << "kvcal " << name << ": " << e.what() << "\nTry 'kvcal " << name << " --help'.\n";
    return 2;
  } catch (const kvcal::error& e) {
    err << "kvcal " << name << ": error: " << e.what() << "\n";
    log_debug("(raised at ", e.where(), ")");
    return 1;
  } catch (const std::exception& e) {
    err << "kvcal " << name << ": error: " << first_line(e.what()) << "\n";
    return 1;
  }
}

}  // namespace kvcal::cli
