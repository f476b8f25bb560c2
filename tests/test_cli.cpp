// cli/: help of every subcommand, exit codes for usage and run-time errors, --version.
#include <doctest/doctest.h>

#include <sstream>

#include "cli/app.h"
#include "cli/command.h"
#include "kernels/common/log.h"
#include "runtime/io/safetensors.h"
#include "tests/test_util.h"

namespace {
struct result {
  int code;
  std::string out, err;
};
result kvcal_run(std::vector<std::string> args) {
  std::ostringstream out, err;
  int code = kvcal::cli::run(args, out, err);
  kvcal::set_log_level(kvcal::log_level::info);
  return {code, out.str(), err.str()};
}
}  // namespace

TEST_CASE("kvcal --help lists every subcommand and marks unavailable ones") {
  auto r = kvcal_run({"--help"});
  CHECK(r.code == 0);
  for (const auto& c : kvcal::cli::commands()) {
    CHECK_MESSAGE(r.out.find(std::string("  ") + c.name) != std::string::npos, c.name);
    if (!c.run) CHECK(r.out.find(c.tracked_by) != std::string::npos);
  }
  CHECK(kvcal_run({}).code == 2);
}

TEST_CASE("kvcal <cmd> --help works for every subcommand") {
  for (const auto& c : kvcal::cli::commands()) {
    auto r = kvcal_run({c.name, "--help"});
    CHECK_MESSAGE(r.code == 0, c.name);
    CHECK_MESSAGE(r.out.find(c.name) != std::string::npos, c.name);
    if (c.run) CHECK_MESSAGE(r.out.find("--quiet") != std::string::npos, c.name);
  }
}

TEST_CASE("usage errors exit 2 with one clear message") {
  auto r = kvcal_run({"--bogus"});
  CHECK(r.code == 2);
  CHECK(r.err.find("unknown option '--bogus'") != std::string::npos);
  r = kvcal_run({"frobnicate"});
  CHECK(r.code == 2);
  CHECK(r.err.find("unknown command 'frobnicate'") != std::string::npos);
  r = kvcal_run({"inspect", "--no-such-option"});
  CHECK(r.code == 2);
  CHECK(r.err.find("no-such-option") != std::string::npos);
  CHECK(r.err.find("kvcal inspect --help") != std::string::npos);
  r = kvcal_run({"inspect", "x", "--max-tensors", "many"});
  CHECK(r.code == 2);
  CHECK(r.err.find("max-tensors") != std::string::npos);
  r = kvcal_run({"inspect"});
  CHECK(r.code == 2);
  for (const auto& c : kvcal::cli::commands())
    if (!c.run) {
      r = kvcal_run({c.name});
      CHECK(r.code == 2);
      CHECK(r.err.find("not available in this build") != std::string::npos);
    }
}

TEST_CASE("run-time errors exit 1 naming the file") {
  kvcal::test::scratch_dir dir;
  auto r = kvcal_run({"inspect", dir.file("missing.safetensors")});
  CHECK(r.code == 1);
  CHECK(r.err.find("missing.safetensors") != std::string::npos);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  kvcal::test::write_bytes(dir.file("junk"), "junkjunkjunk");
  r = kvcal_run({"inspect", dir.file("junk")});
  CHECK(r.code == 1);
}

TEST_CASE("inspect describes a safetensors file") {
  kvcal::test::scratch_dir dir;
  float w[4] = {1, 2, 3, 4};
  kvcal::write_safetensors(dir.file("w.safetensors"), {{"weight", kvcal::st_dtype::F32, {2, 2}, w}},
                           {{"format", "demo"}});
  auto r = kvcal_run({"inspect", dir.file("w.safetensors"), "-q"});
  CHECK(r.code == 0);
  CHECK(r.out.find("weight") != std::string::npos);
  CHECK(r.out.find("[2, 2]") != std::string::npos);
  CHECK(r.out.find("format: demo") != std::string::npos);
}

TEST_CASE("--version prints version, commit and formats") {
  auto r = kvcal_run({"--version"});
  CHECK(r.code == 0);
  CHECK(r.out.find("kvcal 0.") != std::string::npos);
  CHECK(r.out.find("commit ") != std::string::npos);
  CHECK(r.out.find("formats:") != std::string::npos);
  CHECK(r.out.find("devices:") != std::string::npos);
}
