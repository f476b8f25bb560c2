// kvcal bench: decode attention per layer through the CUDA kernels, for preset templates or files,
// side by side with torch SDPA FP16 and our fp16 kernel in the same run (bench/decode_bench.h).
// Presets the kernels cannot run yet are listed with the reason instead of a time.
#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <ostream>
#include <sstream>
#include <string>

#include "bench/decode_bench.h"
#include "cli/command.h"
#include "kernels/common/error.h"
#include "presets/preset_template.h"
#include "runtime/preset.h"

namespace kvcal::cli {
namespace {

std::vector<int> int_list(const std::string& s, const char* opt) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    std::size_t used = 0;
    int x = 0;
    try {
      x = std::stoi(item, &used);
    } catch (...) {
      used = 0;
    }
    if (used != item.size() || x < 1)
      throw usage_error(std::string(opt) + ": '" + item + "' is not a positive integer");
    v.push_back(x);
  }
  if (v.empty()) throw usage_error(std::string(opt) + ": empty list");
  return v;
}

// Qwen2.5-7B's attention shapes: the reference model.
model_config qwen25_7b_shapes() {
  model_config c;
  c.model_type = "qwen2";
  c.vocab_size = 152064;
  c.hidden_size = 3584;
  c.intermediate_size = 18944;
  c.num_hidden_layers = 28;
  c.num_attention_heads = 28;
  c.num_key_value_heads = 4;
  c.head_dim = 128;
  c.max_position_embeddings = 131072;
  c.rope.theta = 1e6;
  return c;
}

}  // namespace

int run_bench(const std::vector<std::string>& args_in, io& io) {
  std::vector<std::string> args = args_in;
  if (!args.empty() && args[0] == "decode") args.erase(args.begin());
  std::string batches_s, lens_s, model_dir, json_out;
  std::vector<std::string> presets;
  decode_shape s;
  bool fp32_dequant = false;
  std::string register_direct = "on";
  int latent_rank = 32;
  po::options_description opts("Options");
  // clang-format off
  opts.add_options()
      ("preset", po::value<std::vector<std::string>>(&presets)->multitoken(),
       "template names, preset files or the bench-only cases kivi-3 / k3v2 (3-bit KIVI layout; K "
       "3-bit with V 2-bit) (repeatable; default: fp16 kivi-4 kivi-2 knlp-v-pca-int8 "
       "hybrid-k2-vpca8)")
      ("batch", po::value<std::string>(&batches_s)->default_value("1,8,32"), "batch sizes")
      ("len", po::value<std::string>(&lens_s)->default_value("4096,32768,131072"),
       "context lengths (tokens held)")
      ("model", po::value<std::string>(&model_dir),
       "take head counts and head_dim from this model folder's config.json "
       "(default: Qwen2.5-7B, 28 q / 4 kv heads, d 128)")
      ("reps", po::value<int>(&s.reps)->default_value(50), "timed calls per case (median)")
      ("fp32-dequant", po::bool_switch(&fp32_dequant),
       "dequantize in fp32 arithmetic (default: fp16, half_dequant)")
      ("register-direct", po::value<std::string>(&register_direct)->default_value("on"),
       "on|off: run the preset rows with the register-direct kernel where it covers the shape "
       "(decode_attention_params::register_direct)")
      ("latent-rank", po::value<int>(&latent_rank)->default_value(32),
       "PCA rank (V, and K in the K latent mode) of templates whose rank comes from the PCA file "
       "(16, 32, 64, 96, 128; "
       "at most head_dim); the bench has "
       "no calibration: latent rows use a random orthonormal basis (synthetic data)")
      ("json", po::value<std::string>(&json_out), "also write the rows to this JSON file");
  // clang-format on
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse_options("bench",
                     "[decode] [--preset P ...] [--batch 1,8,32] [--len 4096,32768,131072] "
                     "[--model DIR] [--reps N] [--register-direct on|off] [--latent-rank 32] "
                     "[--json OUT]",
                     opts, pos, args, vm, io))
    return 0;
  if (s.reps < 1) throw usage_error("--reps must be >= 1");
  if (register_direct != "on" && register_direct != "off")
    throw usage_error("--register-direct must be on or off, got '" + register_direct + "'");
  if (latent_rank != 16 && latent_rank != 32 && latent_rank != 64 && latent_rank != 96 &&
      latent_rank != 128)
    throw usage_error("--latent-rank " + std::to_string(latent_rank) +
                      ": the kernels take 16, 32, 64, 96 or 128");
  const std::vector<int> batches = int_list(batches_s, "--batch");
  const std::vector<int> lens = int_list(lens_s, "--len");
  const model_config cfg =
      model_dir.empty() ? qwen25_7b_shapes() : read_model_config(model_dir + "/config.json");
  s.n_heads = static_cast<int>(cfg.num_attention_heads);
  s.n_kv = static_cast<int>(cfg.num_key_value_heads);
  s.head_dim = static_cast<int>(cfg.head_dim);
  if (presets.empty()) presets = {"fp16", "kivi-4", "kivi-2", "knlp-v-pca-int8", "hybrid-k2-vpca8"};

  // Every preset resolved before any GPU work: a typo fails at once.
  std::vector<decode_case> cases;
  const std::vector<decode_case> bench_only = bench_only_decode_cases();
  for (const auto& p : presets) {
    const auto only = std::find_if(bench_only.begin(), bench_only.end(),
                                   [&](const decode_case& c) { return c.name == p; });
    decode_case c;
    if (only != bench_only.end() && !std::ifstream(p).good()) {
      c = *only;  // no template describes it
    } else {
      preset_recipe r;
      std::string name = p;
      if (std::ifstream(p).good()) {
        const preset_file f(p);
        r = f.recipe();
        if (r.model.n_kv_heads != s.n_kv || r.model.head_dim != s.head_dim)
          io.err << "kvcal bench: note: " << p << " was made for " << r.model.n_kv_heads
                 << " KV heads of dim " << r.model.head_dim << "; timing it at " << s.n_kv << " x "
                 << s.head_dim << "\n";
      } else {
        const auto known = preset_template_names();
        if (std::find(known.begin(), known.end(), p) == known.end()) {
          std::string list;
          for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
          for (const auto& b : bench_only) list += ", " + b.name + " (bench only)";
          throw usage_error("--preset " + p + ": no such file, and not a template (" + list + ")");
        }
        r = expand_recipe(preset_template(p), cfg, "template " + p,
                          recipe_parse_options{/*allow_unset_rank=*/true});
      }
      if (name.size() > 40) name = "..." + name.substr(name.size() - 37);
      c = decode_case_of(r, name);
    }
    c.half_dequant = !fp32_dequant;
    c.register_direct = register_direct == "on";
    const bool narrow = c.bits == 3 || (c.v_bits > 0 && c.v_bits != c.bits);
    if (c.unsupported.empty() && narrow && (!c.register_direct || s.head_dim != 128))
      c.unsupported = "3-bit / mixed K / V widths: register-direct kernel only (head_dim 128)";
    if (c.unsupported.empty() && c.v_latent) {  // no calibration here: a synthetic basis
      if (c.v_latent_rank == 0) c.v_latent_rank = latent_rank;
      if (c.k_latent && c.k_latent_rank == 0) c.k_latent_rank = latent_rank;
      c.name += c.k_latent ? " (K+V latent r" + std::to_string(c.v_latent_rank) + " synthetic)"
                           : " (V PCA r" + std::to_string(c.v_latent_rank) + " synthetic)";
    }
    // The row says so only where the kernel covers the shape (else the flag changes nothing):
    // head_dim 128; fp16 or K records of group 32 / 64 / 128; V latents of rank 16 / 32 / 64 /
    // 96 / 128 (decode_attention_rd_supported).
    const bool k_rd = c.bits == 16 || ((c.bits == 2 || c.bits == 3 || c.bits == 4 || c.bits == 8) &&
                                       (c.group == 32 || c.group == 64 || c.group == 128));
    const int rank = c.v_latent_rank;
    const bool v_rd =
        !c.v_latent || rank == 16 || rank == 32 || rank == 64 || rank == 96 || rank == 128;
    if (c.register_direct && c.unsupported.empty() && s.head_dim == 128 && k_rd && v_rd)
      c.name += " (register-direct)";
    if (c.k_latent && c.unsupported.empty() && !c.register_direct)
      c.unsupported = "K latent mode: the register-direct kernel only (--register-direct on)";
    cases.push_back(c);
  }

  bool header = false;  // printed with the first row: a machine without CUDA fails before it
  nlohmann::json rows = nlohmann::json::array();
  for (int B : batches)
    for (int L : lens) {
      s.batch = B;
      s.len = L;
      const decode_timing sdpa = time_sdpa_fp16(s);
      decode_case fp16;
      fp16.name = "fp16 (ours)";
      fp16.half_dequant = !fp32_dequant;
      const decode_timing ours = time_decode_case(fp16, s);
      if (!header) {
        io.out << "decode attention per layer, " << s.n_heads << " q / " << s.n_kv
               << " kv heads, d " << s.head_dim << ", median of " << s.reps
               << ", L2 flushed before each call\n\n"
               << decode_table_header();
        header = true;
      }
      io.out << decode_table_row("torch SDPA fp16", s, sdpa, ours.us, sdpa.us)
             << decode_table_row(fp16.name, s, ours, ours.us, sdpa.us);
      // v_latent_rank > 0: the row ran the V latent mode on a synthetic basis (no calibration).
      auto add = [&](const std::string& m, const decode_timing& t, const std::string& why,
                     int v_latent_rank = 0) {
        rows.push_back({{"method", m},
                        {"batch", B},
                        {"len", L},
                        {"us", t.us},
                        {"bytes_read", t.bytes},
                        {"fp16_bytes", t.fp16_bytes},
                        {"sdpa_us", sdpa.us},
                        {"fp16_ours_us", ours.us},
                        {"unsupported", why},
                        {"v_latent_rank", v_latent_rank}});
      };
      add("torch SDPA fp16", sdpa, "");
      add(fp16.name, ours, "");
      for (const auto& c : cases) {
        if (c.bits == 16 && !c.v_latent && c.unsupported.empty()) continue;  // the fp16 row
        if (!c.unsupported.empty()) {
          io.out << "| " << c.name << " | " << B << " | " << L
                 << " | unsupported: " << c.unsupported << " | | | | | | |\n";
          add(c.name, {}, c.unsupported);
          continue;
        }
        const decode_timing t = time_decode_case(c, s);
        io.out << decode_table_row(c.name, s, t, ours.us, sdpa.us);
        add(c.name, t, "", c.v_latent ? c.v_latent_rank : 0);
      }
      io.out.flush();
    }
  for (const auto& c : cases) {
    if (!c.unsupported.empty()) continue;
    if (c.v_latent)
      io.out << "\n"
             << c.name << ": " << (c.k_latent ? "K and V" : "V")
             << " PCA latents on a random orthonormal basis of rank " << c.v_latent_rank
             << " (synthetic data: the bench has no calibration; the speed "
             << "does not depend on the basis)";
    if (c.compress_after >= 0)
      io.out << "\n"
             << c.name << ": adaptive, no records up to " << c.compress_after
             << " tokens, then the last " << c.residual << " fp16 (the bench follows it; above "
             << c.compress_after << " tokens it only delays the first compression)";
  }
  io.out << "\n";
  io.out << "\nGoal (issue 11): at B8 L32k, speedup vs SDPA >= 0.8 x (fp16 bytes / bytes read), "
            ">= 2.4 TB/s effective on compressed bytes; at B1 L32k >= 2.0 TB/s.\n";
  if (!json_out.empty()) {
    const std::string tmp = json_out + ".partial";
    {
      std::ofstream f(tmp);
      KVCAL_CHECK(f.good(), json_out, ": cannot write");
      f << nlohmann::json{{"format", "kvcal.bench.decode"}, {"version", 1}, {"rows", rows}}.dump(2)
        << "\n";
      KVCAL_CHECK(f.good(), json_out, ": write failed");
    }
    KVCAL_CHECK(std::rename(tmp.c_str(), json_out.c_str()) == 0, json_out, ": cannot rename ", tmp);
  }
  return 0;
}

}  // namespace kvcal::cli
