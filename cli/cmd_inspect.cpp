// kvcal inspect FILE: describe a file kvcal reads or writes.
#include <ostream>

#include "calibrate/capture_report.h"
#include "calibrate/pca_format.h"
#include "calibrate/pca_report.h"
#include "cli/command.h"
#include "runtime/io/safetensors_report.h"
#include "runtime/preset.h"
#include "runtime/preset_report.h"

namespace kvcal::cli {

int run_inspect(const std::vector<std::string>& args, io& io) {
  po::options_description opts("Options");
  std::string file;
  int max_tensors = 0;
  opts.add_options()
      ("file", po::value<std::string>(&file)->required(), "file to describe (positional)")
      ("max-tensors", po::value<int>(&max_tensors)->default_value(50),
       "list at most this many tensors (0 = all)");
  po::positional_options_description pos;
  pos.add("file", 1);
  po::variables_map vm;
  if (!parse_options("inspect", "FILE [options]", opts, pos, args, vm, io)) return 0;
  if (max_tensors < 0) throw usage_error("--max-tensors must be >= 0");
  // A preset is a safetensors file with a kvcal recipe: shown as the recipe and its byte cost.
  if (is_capture_file(file))
    describe_capture(file, io.out);
  else if (is_pca_file(file))
    describe_pca(read_pca_file(file), file, io.out);
  else if (is_preset_file(file))
    describe_preset(file, io.out);
  else
    describe_safetensors(file, static_cast<std::size_t>(max_tensors), io.out);
  return 0;
}

}  // namespace kvcal::cli
