#include "cli/data_paths.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "kernels/common/error.h"

namespace kvcal::cli {

std::string data_dir(std::string* maybe_why) {
  std::string dir, why;
  if (const char* env = std::getenv("KVCAL_DATA_DIR"); env && *env) {
    dir = env;
    why = "$KVCAL_DATA_DIR";
  } else if (std::error_code ec; std::filesystem::is_directory("data", ec)) {
    dir = "data";
    why = "./data";
  } else {
    dir = std::string(KVCAL_DEFAULT_DATA_DIR);
    why = "the source tree";
  }
  if (maybe_why) *maybe_why = why;
  return dir;
}

std::string default_model_dir() {
  return data_dir() + "/models/kvcal-ref-v1";
}
std::string default_eval_text() {
  return data_dir() + "/eval.txt";
}
std::string default_tasks_dir() {
  return data_dir() + "/tasks";
}

void check_default_model_dir(const std::string& dir) {
  std::string why;
  const std::string data = data_dir(&why);
  KVCAL_CHECK(std::ifstream(dir + "/config.json").good(), dir,
              ": default model folder not found (no config.json; data directory ", data, " from ",
              why, "); give --model DIR or set KVCAL_DATA_DIR");
}

}  // namespace kvcal::cli
