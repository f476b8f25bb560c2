// kvcal eval: baseline perplexity of a model over a text with the plain full-precision cache
// (convention in docs/eval.md). Compressed caches (--preset) and retrieval tasks come with the
// runtime issue.
#include <cstdio>
#include <ostream>
#include <string>

#include "cli/command.h"
#include "model/perplexity.h"

namespace kvcal::cli {

int run_eval(const std::vector<std::string>& args, io& io) {
  eval_params p;
  po::options_description opts("Options");
  // clang-format off
  opts.add_options()
      ("model", po::value<std::string>(&p.model_dir)->required(),
       "Hugging Face model folder (config.json, model*.safetensors, tokenizer.json)")
      ("text", po::value<std::string>(&p.text_path)->required(), "UTF-8 text file to score")
      ("context", po::value<std::int64_t>(&p.context)->default_value(0),
       "window length in tokens (0 = min(max_position_embeddings, 2048))")
      ("device", po::value<std::string>(&p.device)->default_value("cpu"), "cpu | cuda | cuda:N")
      ("dtype", po::value<std::string>(&p.dtype),
       "fp32 | bf16 | fp16 (default: fp32 on cpu, bf16 on cuda)")
      ("max-tokens", po::value<std::int64_t>(&p.max_tokens)->default_value(0),
       "score only the first N tokens of the text (0 = all)")
      ("json", po::value<std::string>(&p.json_out), "also write the figures as JSON to this file");
  // clang-format on
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse_options("eval",
                     "--model DIR --text FILE [--context N] [--device cpu|cuda] [--json OUT]", opts,
                     pos, args, vm, io))
    return 0;
  if (p.context < 0 || p.context == 1) throw usage_error("--context must be 0 (default) or >= 2");
  if (p.max_tokens < 0) throw usage_error("--max-tokens must be >= 0");
  const eval_result r = run_eval(p);
  char ppl[64], nll[64];
  std::snprintf(ppl, sizeof ppl, "%.4f", r.ppl.ppl);
  std::snprintf(nll, sizeof nll, "%.5f", r.ppl.mean_nll);
  io.out << r.text_path << ": PPL " << ppl << " (mean NLL " << nll << " nats) over "
         << r.ppl.predicted << " predicted tokens, " << r.ppl.windows << " window"
         << (r.ppl.windows == 1 ? "" : "s") << " of " << r.ppl.context << " tokens; " << r.device
         << " " << r.dtype << ", full cache"
         << (r.bos_added ? ", BOS prepended by the tokenizer" : "") << "\n";
  if (!p.json_out.empty()) io.out << "wrote " << p.json_out << "\n";
  return 0;
}

}  // namespace kvcal::cli
