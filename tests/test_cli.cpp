// cli/: help of every subcommand, exit codes for usage and run-time errors, --version, and
// the defaults of kvcal eval (cli/data_paths.h).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/app.h"
#include "cli/command.h"
#include "cli/data_paths.h"
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

TEST_CASE("eval defaults: the reference model and the committed eval sets; --task, --prefix") {
  // The data directory is $KVCAL_DATA_DIR, else ./data, else the source tree's data/.
  const char* env = std::getenv("KVCAL_DATA_DIR");
  const std::string saved = env ? env : "";
  unsetenv("KVCAL_DATA_DIR");
  const std::string src_data = std::string(KVCAL_SOURCE_DIR) + "/data";
  std::error_code ec;
  const bool cwd_data = std::filesystem::is_directory("data", ec);
  const std::string data = cwd_data ? "data" : src_data;
  CHECK(kvcal::cli::data_dir() == data);
  CHECK(kvcal::cli::default_model_dir() == data + "/models/kvcal-ref-v1");
  CHECK(kvcal::cli::default_eval_text() == data + "/eval.txt");
  CHECK(kvcal::cli::default_tasks_dir() == data + "/tasks");
  auto r = kvcal_run({"eval", "--help"});
  CHECK(r.code == 0);
  CHECK_MESSAGE(r.out.find(data + "/models/kvcal-ref-v1") != std::string::npos, r.out);
  CHECK(r.out.find(data + "/eval.txt") != std::string::npos);
  CHECK(r.out.find("--prefix") != std::string::npos);
  CHECK(r.out.find("--task ") != std::string::npos);

  if (!kvcal::test::file_exists(src_data + "/models/kvcal-ref-v1/config.json") || cwd_data) {
    MESSAGE("the reference model is not at " << src_data << " (or ./data exists): run skipped");
  } else {
    // No --model, no --text: the reference model scores the committed eval text.
    r = kvcal_run({"eval", "--max-tokens", "40", "--context", "20"});
    CHECK_MESSAGE(r.code == 0, r.err);
    CHECK_MESSAGE(r.out.find(src_data + "/eval.txt: PPL ") == 0, r.out);
    // --task passkey alone: retrieval on the committed task set, no PPL part.
    r = kvcal_run({"eval", "--task", "passkey", "--task-lengths", "256", "--task-limit", "1"});
    CHECK_MESSAGE(r.code == 0, r.err);
    CHECK_MESSAGE(r.out.find("passkey") != std::string::npos, r.out);
    CHECK_MESSAGE(r.out.find("PPL") == std::string::npos, r.out);
    // --task ppl with a preset and --prefix (= --prefill).
    kvcal::test::scratch_dir dir;
    const std::string preset = dir.file("fp16.safetensors");
    r = kvcal_run({"export", "--template", "fp16", "--model", kvcal::cli::default_model_dir(),
                   "--out", preset});
    REQUIRE_MESSAGE(r.code == 0, r.err);
    const std::string js = dir.file("eval.json");
    r = kvcal_run({"eval", "--task", "ppl", "--preset", preset, "--prefix", "12", "--context", "20",
                   "--max-tokens", "40", "--json", js});
    CHECK_MESSAGE(r.code == 0, r.err);
    const auto j = nlohmann::json::parse(kvcal::test::read_bytes(js));
    CHECK(j.at("prefill") == 12);
    CHECK(j.at("model") == kvcal::cli::default_model_dir());
  }
  r = kvcal_run({"eval", "--prefix", "5", "--prefill", "6"});
  CHECK(r.code == 2);
  CHECK(r.err.find("--prefix and --prefill") != std::string::npos);

  // A data directory without the reference model: one clear error naming the folder.
  kvcal::test::scratch_dir empty;
  setenv("KVCAL_DATA_DIR", empty.path().c_str(), 1);
  CHECK(kvcal::cli::data_dir() == empty.path());
  r = kvcal_run({"eval"});
  CHECK(r.code == 1);
  CHECK_MESSAGE(r.err.find(empty.path() + "/models/kvcal-ref-v1: default model folder not found") !=
                    std::string::npos,
                r.err);
  CHECK(r.err.find("KVCAL_DATA_DIR") != std::string::npos);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  // An explicit --model is not a default: its own error, as before.
  r = kvcal_run({"eval", "--model", empty.file("nope")});
  CHECK(r.code == 1);
  CHECK(r.err.find("default model folder") == std::string::npos);
  if (saved.empty())
    unsetenv("KVCAL_DATA_DIR");
  else
    setenv("KVCAL_DATA_DIR", saved.c_str(), 1);
}
