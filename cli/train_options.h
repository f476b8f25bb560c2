// The options train-ae and train-policy share (train/train_loop.h: epochs, batch, learning rate,
// early stopping, validation split, streaming, precision, device, seed, resume, report), declared
// once so both subcommands parse and document them alike. Defaults shown are the params' own
// (each trainer sets its defaults in its params struct), except --device (auto on the CLI).
//
//   ae_train_params p;
//   add_train_options(opts, p, {"tokens per step", "fraction held out", "do not write ..."});
//   ... parse_options(...) ...
//   read_train_flags(vm, "train-ae", args, p);   // --resume, --no-report, the command line
#pragma once

#include <string>
#include <vector>

#include "cli/command.h"
#include "train/train_loop.h"

namespace kvcal::cli {

// Help texts that differ between the trainers.
struct train_option_help {
  const char* batch;         // --batch
  const char* val_fraction;  // --val-fraction
  const char* no_report;     // --no-report
};

// Adds --epochs, --batch, --lr, --weight-decay, --patience, --val-fraction, --val-max-tokens,
// --shuffle-buffer, --cache-mb, --precision, --device, --seed, --resume and --no-report (in that
// order) writing into p.
void add_train_options(po::options_description& opts, train_loop_params& p,
                       const train_option_help& help);

// After parsing: p.resume, p.write_report and p.command_line ("kvcal <name> <args...>").
void read_train_flags(const po::variables_map& vm, const std::string& name,
                      const std::vector<std::string>& args, train_loop_params& p);

}  // namespace kvcal::cli
