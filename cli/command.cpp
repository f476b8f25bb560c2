#include "cli/command.h"

#include <ostream>

#include "kernels/common/log.h"

namespace kvcal::cli {

bool parse_options(const std::string& name, const std::string& usage,
                   const po::options_description& opts,
                   const po::positional_options_description& pos,
                   const std::vector<std::string>& args, po::variables_map& vm, io& io) {
  po::options_description common("Common options");
  common.add_options()
      ("help,h", "show this help and exit")
      ("verbose,v", "more log output (debug)")
      ("quiet,q", "errors only; no progress output");
  po::options_description all;
  all.add(opts).add(common);
  try {
    po::store(po::command_line_parser(args).options(all).positional(pos).run(), vm);
    if (vm.count("help")) {
      io.out << "Usage: kvcal " << name << " " << usage << "\n\n" << opts << "\n" << common;
      return false;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw usage_error(e.what());
  }
  if (vm.count("verbose") && vm.count("quiet")) throw usage_error("--verbose and --quiet conflict");
  if (vm.count("verbose")) set_log_level(log_level::debug);
  if (vm.count("quiet")) set_log_level(log_level::error);
  return true;
}

}  // namespace kvcal::cli
