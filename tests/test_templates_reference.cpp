// Issue #8's "every template exports against the reference model": the whole calibration chain
// (capture -> fit-pca -> train-ae -> train-policy) runs on a small capture of
// data/models/kvcal-ref-v1 through the `kvcal` command line, then every shipped template is
// exported with the calibration files it needs, read back by the runtime's preset reader, and
// checked against the model's config.json.
#include <sstream>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "cli/app.h"
#include "presets/preset_template.h"
#include "runtime/model_config.h"
#include "runtime/preset.h"
#include "tests/test_util.h"

using namespace kvcal;

namespace {

const std::string model_dir = std::string(KVCAL_SOURCE_DIR) + "/data/models/kvcal-ref-v1";

int kvcal_run(const std::vector<std::string>& args, std::string* err_text = nullptr) {
  std::ostringstream out, err;
  std::vector<std::string> a = {"-q"};
  a.insert(a.end(), args.begin(), args.end());
  const int rc = cli::run(a, out, err);
  if (err_text) *err_text = err.str();
  if (rc != 0) MESSAGE("kvcal " << args.front() << " failed: " << err.str());
  return rc;
}

}  // namespace

TEST_CASE("every shipped template exports for the reference model with calibrated tensors") {
  test::scratch_dir dir;
  const std::string cap = dir.file("calib.h5"), pca = dir.file("pca.h5"),
                    ae = dir.file("ae.safetensors"), pol = dir.file("policy.safetensors");
  REQUIRE(kvcal_run({"capture", "--model", model_dir, "--text",
                     std::string(KVCAL_SOURCE_DIR) + "/data/calib.txt", "--out", cap,
                     "--max-tokens", "1024", "--seq-len", "128", "--record",
                     "k,v,q,hidden,attn"}) == 0);
  REQUIRE(kvcal_run({"fit-pca", "--capture", cap, "--out", pca, "--energy", "0.9", "--no-svg"}) ==
          0);
  REQUIRE(kvcal_run({"train-ae", "--capture", cap, "--out", ae, "--latent", "16", "--epochs", "1",
                     "--device", "cpu"}) == 0);
  REQUIRE(kvcal_run({"train-policy", "--capture", cap, "--out", pol, "--arch", "linear",
                     "--epochs", "1", "--device", "cpu"}) == 0);

  const model_config cfg = read_model_config(model_dir + "/config.json");
  const std::vector<std::string> names = preset_template_names();
  CHECK(names.size() >= 11);
  for (const std::string& name : names) {
    CAPTURE(name);
    const std::string out = dir.file(name + ".safetensors");
    std::vector<std::string> args = {"export", "--template", name, "--model", model_dir,
                                     "--out",  out,        "--context", "2048"};
    recipe_parse_options lenient;
    lenient.allow_unset_rank = true;  // ranks / latents left at 0 come from the calibration files
    const calibration_needs needs =
        needs_of(expand_recipe(preset_template(name), cfg, name, lenient));
    if (needs.pca) args.insert(args.end(), {"--pca", pca});
    if (needs.ae) args.insert(args.end(), {"--ae", ae});
    if (needs.policy) args.insert(args.end(), {"--policy", pol});
    REQUIRE(kvcal_run(args) == 0);
    const preset_file p(out);
    CHECK(p.recipe().layers.size() == static_cast<std::size_t>(cfg.num_hidden_layers));
    CHECK_NOTHROW(p.check_model(cfg, model_dir + "/config.json"));
    if (needs.pca || needs.ae || needs.policy) CHECK(p.fixed_bytes() > 0);
  }

  // Without the calibration file a template that needs one is refused, naming the option.
  std::string err;
  CHECK(kvcal_run({"export", "--template", "knlp-v-pca-int8", "--model", model_dir, "--out",
                   dir.file("x.safetensors")},
                  &err) == 1);
  CHECK(err.find("--pca") != std::string::npos);
}
