// kvcal fit-pca: per-(layer, KV head) PCA bases of pre-RoPE K and V from captures -> pca.h5.
#include <cstdio>
#include <ostream>
#include <sstream>
#include <string>

#include "calibrate/pca_fit.h"
#include "cli/command.h"

namespace kvcal::cli {

namespace {

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

}  // namespace

int run_fit_pca(const std::vector<std::string>& args, io& io) {
  pca_fit_params p;
  std::string targets = "k,v", center = "on", fp16_kernel = "on";
  po::options_description opts("Options");
  // clang-format off
  opts.add_options()
      ("capture", po::value<std::vector<std::string>>(&p.captures)->multitoken()->required(),
       "capture file(s) from kvcal capture (one model)")
      ("out", po::value<std::string>(&p.out)->required(),
       "pca.h5 to write (an SVG plot of the spectra goes next to it)")
      ("target", po::value<std::string>(&targets)->default_value("k,v"),
       "comma list of k (pre-RoPE keys), v, k_rope (post-RoPE keys, for the report)")
      ("granularity", po::value<std::string>(&p.granularity)->default_value("kv-head"),
       "kv-head: one basis per layer and KV head; layer: one per layer shared by its heads")
      ("rank", po::value<int>(&p.rank), "fixed rank for every block, 1 <= R < head_dim")
      ("energy", po::value<double>(&p.energy),
       "per block the smallest rank explaining this fraction of the variance, in (0, 1] "
       "[default rule: 0.99]")
      ("bytes-per-token", po::value<double>(&p.bytes_per_token),
       "latent bytes per token for all layers, heads, K and V: ranks allocated greedily by "
       "eigenvalue per byte")
      ("latent-bits", po::value<int>(&p.latent_bits)->default_value(16),
       "latent width the byte budget counts: 16, 8 or 4 (8/4 add an fp16 scale + zero per token)")
      ("center", po::value<std::string>(&center)->default_value("on"),
       "on: subtract the mean; off: PCA of the second moment")
      ("device", po::value<std::string>(&p.device)->default_value("auto"),
       "auto | cpu | cuda (no GPU: the CPU is used)")
      ("max-tokens", po::value<std::int64_t>(&p.max_tokens)->default_value(0),
       "use at most this many tokens over all captures (0 = all)")
      ("block-rows", po::value<std::int64_t>(&p.block_rows)->default_value(4096),
       "tokens read and accumulated at a time (bounds memory)")
      ("fp16-kernel", po::value<std::string>(&fp16_kernel)->default_value("on"),
       "on: fp16 captures go to the GPU as stored, fused tensor-core kernel; off: converted to "
       "fp32 on the host, fp32 SGEMM (the reference route)")
      ("no-svg", "do not write the SVG plot")
      ("no-hash", "do not record the captures' sha256 (saves reading them twice)");
  // clang-format on
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse_options("fit-pca",
                     "--capture FILE [FILE...] --out pca.h5 [--rank R | --energy E | "
                     "--bytes-per-token B] [options]",
                     opts, pos, args, vm, io))
    return 0;
  if (vm.count("rank") + vm.count("energy") + vm.count("bytes-per-token") > 1)
    throw usage_error("give at most one of --rank, --energy, --bytes-per-token");
  if (vm.count("rank") && p.rank < 1) throw usage_error("--rank must be >= 1");
  if (vm.count("energy") && !(p.energy > 0 && p.energy <= 1))
    throw usage_error("--energy " + std::to_string(p.energy) + " must be in (0, 1]");
  if (vm.count("bytes-per-token") && !(p.bytes_per_token > 0))
    throw usage_error("--bytes-per-token must be positive");
  if (center != "on" && center != "off") throw usage_error("--center must be on or off");
  if (fp16_kernel != "on" && fp16_kernel != "off")
    throw usage_error("--fp16-kernel must be on or off");
  p.gpu_fp16_kernel = fp16_kernel == "on";
  p.center = center == "on";
  p.targets = split_list(targets);
  p.write_svg = vm.count("no-svg") == 0;
  p.hash_sources = vm.count("no-hash") == 0;
  validate_pca_fit_params(p);

  const pca_fit_result r = run_pca_fit(p);
  io.out << p.out << ": " << r.file.blocks.size() << " blocks (" << r.file.n_layers << " layers x "
         << (p.granularity == "layer" ? std::int64_t{1} : r.file.n_kv_heads) << " x "
         << r.file.targets.size() << " targets), " << r.file.n_tokens << " tokens on "
         << r.device_used << "\n";
  // Read bandwidth over the whole run: bytes read / wall seconds (issue #6 benchmark).
  char line[160];
  std::snprintf(line, sizeof line, "  read %.3f GB in %.2f s wall: %.3f GB/s\n", r.read_bytes / 1e9,
                r.seconds_total, r.seconds_total > 0 ? r.read_bytes / r.seconds_total / 1e9 : 0.0);
  io.out << line;
  io.out << "  accumulate " << r.seconds_accumulate << " s ("
         << (r.seconds_accumulate > 0 ? r.read_bytes / r.seconds_accumulate / 1e6 : 0)
         << " MB/s read), eigensolve " << r.seconds_eig * 1e3 << " ms [" << r.eig_solver << "]\n";
  io.out << "  latent bytes per token: " << r.bits_per_token / 8.0;
  if (r.budget_bits > 0)
    io.out << " of a budget of " << r.budget_bits / 8.0 << "; discarded variance " << r.discarded
           << " (best uniform rank " << r.uniform_rank << ": " << r.uniform_discarded << ")";
  io.out << "\n";
  if (!r.svg_path.empty()) io.out << "  plot: " << r.svg_path << "\n";
  return 0;
}

}  // namespace kvcal::cli
