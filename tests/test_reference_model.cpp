// The committed reference model (data/models/kvcal-ref-v1) through kvcal's own tokenizer and
// forward, against the figures transformers produced when the model was trained
// (eval_results.json, written by data/train_reference.py in fp32 on the GPU machine).
//
// Issue #4's acceptance: kvcal's C++ forward reproduces transformers' PPL on held-out text
// within 0.5% on CPU. data/eval.txt is taken from the test split, and the protocol is the same
// on both sides (one stream with the post-processor's BOS, non-overlapping windows of 2048).
#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "model/llama.h"
#include "model/perplexity.h"
#include "model/tokenizer.h"
#include "tests/torch_doctest.h"

using namespace kvcal;

namespace {

const std::string model_dir = std::string(KVCAL_SOURCE_DIR) + "/data/models/kvcal-ref-v1";

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE_MESSAGE(f.good(), path);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

}  // namespace

TEST_CASE("reference model: PPL of data/eval.txt equals transformers' within 0.5%") {
  const auto want = nlohmann::json::parse(slurp(model_dir + "/eval_results.json"));
  const double want_ppl = want.at("ppl").at("eval_txt").at("ppl").get<double>();
  const std::int64_t want_tokens = want.at("ppl").at("eval_txt").at("tokens").get<std::int64_t>();

  const tokenizer tok = tokenizer::load(model_dir);
  const std::vector<std::int32_t> ids =
      tok.encode(slurp(std::string(KVCAL_SOURCE_DIR) + "/data/eval.txt"), true);
  REQUIRE(!ids.empty());
  CHECK(ids.front() == 0);  // the post-processor's BOS (<|endoftext|>)

  const llama_model model = llama_model::load(model_dir, at::kCPU, at::kFloat);
  perplexity_options opt;
  opt.context = 2048;
  opt.show_progress = false;
  const perplexity_result r = perplexity(model, ids, opt);

  MESSAGE("kvcal PPL " << r.ppl << " over " << r.predicted << " tokens; transformers " << want_ppl
                       << " over " << want_tokens);
  // Same tokenizer output length => same windows => same predicted-token count.
  CHECK(r.predicted == want_tokens);
  CHECK(std::abs(r.ppl / want_ppl - 1.0) <= 0.005);
}
