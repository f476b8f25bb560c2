// kvcal generate: stream a continuation of a prompt through the plain cache or a compressed one
// (--preset), then print tokens/s and the cache's bytes (model/generate.h).
#include <cstdio>
#include <fstream>
#include <ostream>
#include <sstream>
#include <string>

#include "cli/command.h"
#include "kernels/common/error.h"
#include "model/generate.h"

namespace kvcal::cli {

int run_generate(const std::vector<std::string>& args, io& io) {
  generate_params p;
  std::string prompt_file;
  bool greedy = false;
  po::options_description opts("Options");
  // clang-format off
  opts.add_options()
      ("model", po::value<std::string>(&p.model_dir)->required(),
       "Hugging Face model folder (config.json, model*.safetensors, tokenizer.json)")
      ("preset", po::value<std::string>(&p.preset), "preset file (default: plain fp cache)")
      ("prompt", po::value<std::string>(&p.prompt), "prompt text")
      ("prompt-file", po::value<std::string>(&prompt_file), "read the prompt from this file")
      ("max-new", po::value<std::int64_t>(&p.max_new)->default_value(64), "new tokens at most")
      ("greedy", po::bool_switch(&greedy), "argmax decoding (the default without --temperature)")
      ("temperature", po::value<double>(&p.sampling.temperature),
       "sample at this temperature (> 0)")
      ("top-p", po::value<double>(&p.sampling.top_p)->default_value(1.0),
       "nucleus sampling: keep the most likely tokens up to this mass")
      ("seed", po::value<std::uint64_t>(&p.sampling.seed)->default_value(0), "sampling seed")
      ("device", po::value<std::string>(&p.device)->default_value("cpu"), "cpu | cuda | cuda:N")
      ("dtype", po::value<std::string>(&p.dtype),
       "fp32 | bf16 | fp16 (default: fp32 on cpu, bf16 on cuda)");
  // clang-format on
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse_options("generate",
                     "--model DIR [--preset P] --prompt TEXT|--prompt-file F [--max-new N] "
                     "[--greedy | --temperature T --top-p P --seed S]",
                     opts, pos, args, vm, io))
    return 0;
  if (vm.count("prompt") + vm.count("prompt-file") != 1)
    throw usage_error("give exactly one of --prompt and --prompt-file");
  if (!prompt_file.empty()) {
    std::ifstream f(prompt_file, std::ios::binary);
    KVCAL_CHECK(f.good(), prompt_file, ": cannot open the prompt file");
    std::ostringstream ss;
    ss << f.rdbuf();
    p.prompt = ss.str();
  }
  if (p.prompt.empty()) throw usage_error("the prompt is empty");
  if (p.max_new < 0) throw usage_error("--max-new must be >= 0");
  const bool sampled = vm.count("temperature") > 0;
  if (greedy && sampled) throw usage_error("--greedy and --temperature exclude each other");
  p.sampling.greedy = !sampled;
  if (sampled && !(p.sampling.temperature > 0)) throw usage_error("--temperature must be > 0");
  if (!(p.sampling.top_p > 0 && p.sampling.top_p <= 1))
    throw usage_error("--top-p must be in (0, 1]");

  const generate_result r = run_generate(p, io.out);
  char rate[64];
  std::snprintf(rate, sizeof rate, "%.1f", r.tokens_per_second);
  io.out << "\n\n[" << r.new_ids.size() << " new tokens after a " << r.prompt_ids.size()
         << "-token prompt" << (r.stopped_at_eos ? ", stopped at EOS" : "") << "; " << rate
         << " tokens/s";
  if (r.has_stats) {
    char ratio[64];
    std::snprintf(ratio, sizeof ratio, "%.2f",
                  r.bytes_held ? r.fp16_bytes / static_cast<double>(r.bytes_held) : 0.0);
    io.out << "; cache holds " << r.bytes_held << " bytes for " << r.cached_tokens
           << " tokens (fp16 would be " << static_cast<long long>(r.fp16_bytes) << ", ratio "
           << ratio << ")";
  } else {
    io.out << "; plain cache, fp16 K+V would be " << static_cast<long long>(r.fp16_bytes)
           << " bytes";
  }
  io.out << "]\n";
  return 0;
}

}  // namespace kvcal::cli
