// Where kvcal's committed data lives (the reference model, eval text, task sets), for command
// defaults: $KVCAL_DATA_DIR if set, else ./data if the working directory has one, else the data/
// folder of the source tree this kvcal was built from.
//
//   std::string m = kvcal::cli::default_model_dir();  // <data>/models/kvcal-ref-v1
#pragma once

#include <string>

namespace kvcal::cli {

// The data directory (not checked for content); `why` says which rule chose it.
std::string data_dir(std::string* maybe_why = nullptr);
std::string default_model_dir();  // <data>/models/kvcal-ref-v1
std::string default_eval_text();  // <data>/eval.txt
std::string default_tasks_dir();  // <data>/tasks

// Throws kvcal::error naming the folder when a default model folder has no config.json.
void check_default_model_dir(const std::string& dir);

}  // namespace kvcal::cli
