// kvcal capture: run a model over text files and stream its KV activations into a capture file.
#include <ostream>
#include <string>

#include "calibrate/capture.h"
#include "cli/command.h"
#include "kernels/common/error.h"

namespace kvcal::cli {

int run_capture(const std::vector<std::string>& args, io& io) {
  capture_params p;
  std::string compress = "on";
  po::options_description opts("Options");
  // clang-format off
  opts.add_options()
      ("model", po::value<std::string>(&p.model_dir)->required(), "model folder (config.json, safetensors, tokenizer.json)")
      ("text", po::value<std::vector<std::string>>(&p.text_files)->multitoken()->required(),
       "UTF-8 text files; each is one document, joined with EOS")
      ("out", po::value<std::string>(&p.out)->required(), "capture file to write (OUT.partial until complete)")
      ("seq-len", po::value<std::int64_t>(&p.seq_len)->default_value(0),
       "tokens per sequence (0 = min(2048, the model's max_position_embeddings))")
      ("max-tokens", po::value<std::int64_t>(&p.max_tokens)->default_value(0), "capture at most this many tokens (0 = all)")
      ("batch", po::value<std::int64_t>(&p.batch)->default_value(1), "sequences per forward")
      ("device", po::value<std::string>(&p.device)->default_value("cpu"), "cpu | cuda | cuda:N")
      ("dtype", po::value<std::string>(&p.dtype)->default_value("auto"),
       "compute dtype: fp32 | bf16 | fp16 (auto = fp32 on CPU, bf16 on CUDA)")
      ("store", po::value<std::string>(&p.store)->default_value("auto"),
       "stored activations: float16 | float32 (auto = float32 for fp32 compute, else float16)")
      ("layers", po::value<std::string>(&p.layers)->default_value("all"), "all | list of layers and ranges, e.g. 0,2,5-7")
      ("record", po::value<std::string>(&p.record)->default_value("k,v,attn"),
       "comma list of: k (pre-RoPE keys), k_rope, v, q (pre-RoPE), hidden, attn (attention statistics)")
      ("attn-window", po::value<std::int64_t>(&p.attn_window)->default_value(64),
       "W of attn_next: attention a token receives from the next W queries")
      ("compress", po::value<std::string>(&compress)->default_value("on"), "on (shuffle + deflate 1) | off")
      ("write-threads", po::value<int>(&p.write_threads)->default_value(0),
       "threads compressing chunks (0 = hardware threads - 1, at least 1)")
      ("seed", po::value<std::uint64_t>(&p.seed)->default_value(0), "shuffle the order of the sequences (0 = input order)")
      ("resume", po::bool_switch(&p.resume), "continue OUT.partial after its last complete sequence");
  // clang-format on
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse_options("capture", "--model DIR --text FILE [FILE...] --out capture.h5 [options]",
                     opts, pos, args, vm, io))
    return 0;
  if (compress != "on" && compress != "off")
    throw usage_error("--compress must be on or off, not '" + compress + "'");
  p.compress = compress == "on";
  try {
    parse_record_list(p.record);
  } catch (const kvcal::error& e) {
    throw usage_error(e.what());
  }
  p.command_line = "kvcal capture";
  for (const auto& a : args) {
    const bool quote = a.find_first_of(" \t'\"$\\") != std::string::npos || a.empty();
    p.command_line += " " + (quote ? "'" + a + "'" : a);
  }
  const capture_result r = run_capture(p);
  // Throughput of the capture loop alone (model loading and tokenizing excluded).
  const double loop_s = r.loop_seconds > 0 ? r.loop_seconds : 1e-9;
  io.out << p.out << ": " << r.tokens << " tokens in " << r.sequences << " sequences, "
         << r.file_bytes / 1000000.0 << " MB"
         << (r.resumed_from_sequence
                 ? " (resumed after sequence " + std::to_string(r.resumed_from_sequence) + ")"
                 : std::string())
         << ", " << r.seconds << " s (tokenize " << r.tokenize_seconds << " s, load "
         << r.load_seconds << " s, capture loop " << r.loop_seconds
         << " s: " << static_cast<std::int64_t>(r.loop_tokens / loop_s) << " tokens/s, "
         << static_cast<std::int64_t>(r.loop_file_bytes / 1e6 / loop_s) << " MB/s written, "
         << r.writer_wait_seconds << " s waiting for the writer, " << r.write_threads
         << " write threads; finish " << r.finish_seconds << " s)\n";
  return 0;
}

}  // namespace kvcal::cli
