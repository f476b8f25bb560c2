#include "calibrate/capture_report.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <ostream>
#include <vector>

#include "calibrate/capture_reader.h"
#include "kernels/common/error.h"

namespace kvcal {

bool is_capture_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  char sig[8] = {};
  if (!f.read(sig, 8) || std::string(sig, 8) != std::string("\x89HDF\r\n\x1a\n", 8)) return false;
  try {
    h5_file h = h5_file::open_read(path);
    return h.has_attr("format") && h.get_string_attr("format") == capture_format_name;
  } catch (const std::exception&) {
    return false;
  }
}

namespace {

std::string mb(double bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f MB", bytes / 1e6);
  return b;
}

struct head_summary {
  double top8 = 0, top32 = 0, outlier = 0, max_abs = 0;
};

// x: [rows, heads, d] floats; one summary per head.
std::vector<head_summary> summarize(const std::vector<float>& x, std::int64_t rows,
                                    std::int64_t heads, std::int64_t d) {
  std::vector<head_summary> out(static_cast<std::size_t>(heads));
  for (std::int64_t h = 0; h < heads; ++h) {
    Eigen::MatrixXd m(rows, d);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < d; ++c)
        m(r, c) = x[static_cast<std::size_t>((r * heads + h) * d + c)];
    const Eigen::RowVectorXd mean = m.colwise().mean();
    const Eigen::MatrixXd centred = m.rowwise() - mean;
    const Eigen::MatrixXd cov = centred.transpose() * centred / std::max<double>(1, rows - 1);
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(cov, Eigen::EigenvaluesOnly);
    Eigen::VectorXd ev = es.eigenvalues().reverse().cwiseMax(0.0);  // descending
    const double total = ev.sum();
    auto top = [&](std::int64_t k) {
      k = std::min<std::int64_t>(k, d);
      return total > 0 ? ev.head(k).sum() / total : 1.0;
    };
    head_summary& s = out[static_cast<std::size_t>(h)];
    s.top8 = top(8);
    s.top32 = top(32);
    const Eigen::RowVectorXd mean_abs = m.cwiseAbs().colwise().mean();
    s.outlier = mean_abs.mean() > 0 ? mean_abs.maxCoeff() / mean_abs.mean() : 0.0;
    s.max_abs = m.cwiseAbs().maxCoeff();
  }
  return out;
}

}  // namespace

void describe_capture(const std::string& path, std::ostream& out, std::int64_t max_rows) {
  capture_reader r(path, /*allow_incomplete=*/true);
  const capture_header& h = r.header();
  const auto model = nlohmann::json::parse(h.model_json, nullptr, false);
  out << path << ": kvcal capture, format version " << capture_format_version << ", "
      << (h.complete ? "complete"
                     : "INCOMPLETE (interrupted; continue with kvcal capture --resume)")
      << "\n";
  out << "  model:    " << (model.is_object() ? model.value("model_type", "?") : "?") << ", "
      << h.n_layers << " layers, " << h.n_heads << " query / " << h.n_kv_heads
      << " KV heads, head_dim " << h.head_dim << ", hidden " << h.hidden_size << "\n";
  std::string rec, lay;
  for (auto it : h.record) rec += std::string(rec.empty() ? "" : ",") + capture_item_name(it);
  for (int l : h.layers) lay += (lay.empty() ? "" : ",") + std::to_string(l);
  out << "  tokens:   " << h.n_tokens << " in " << h.n_sequences << " sequences of <= " << h.seq_len
      << " tokens\n";
  out << "  recorded: " << rec << " of layers " << lay << ", stored " << h.dtype << ", compression "
      << (h.compress ? "shuffle+deflate1" : "none") << ", attn window " << h.attn_window << "\n";
  const auto inputs = nlohmann::json::parse(h.inputs_json, nullptr, false);
  if (inputs.is_array())
    for (const auto& f : inputs)
      out << "  input:    " << f.value("path", "?") << " (" << f.value("bytes", 0)
          << " bytes, sha256 " << f.value("sha256", "?").substr(0, 16) << "...)\n";
  out << "  written by kvcal " << h.kvcal_version << ": " << h.command_line << "\n";

  // Dataset sizes, summed over layers per name.
  out << "  datasets (all layers):  name        rows x row shape        stored      raw\n";
  std::int64_t total_stored = 0, total_raw = 0;
  for (capture_item it : h.record)
    for (const auto& name : capture_item_datasets(it)) {
      std::int64_t stored = 0, raw = 0;
      std::string shape;
      for (int l : h.layers) {
        const h5_dataset& d = r.dataset(capture_layer_path(l, name));
        stored += d.storage_bytes();
        raw += d.rows() * d.row_elems() * static_cast<std::int64_t>(h5_elem_size(d.dtype()));
        shape.clear();
        for (auto v : d.inner()) shape += (shape.empty() ? "" : "x") + std::to_string(v);
      }
      total_stored += stored;
      total_raw += raw;
      char line[160];
      std::snprintf(line, sizeof line, "    %-12s %10lld x [%-12s]  %10s  %10s\n", name.c_str(),
                    static_cast<long long>(h.n_tokens), shape.c_str(),
                    mb(static_cast<double>(stored)).c_str(), mb(static_cast<double>(raw)).c_str());
      out << line;
    }
  out << "    total stored " << mb(static_cast<double>(total_stored)) << " (raw "
      << mb(static_cast<double>(total_raw)) << "), file "
      << mb(static_cast<double>(r.file().file_size())) << "\n";

  // Per layer / KV head summary of K and V.
  const std::string kname = h.records(capture_item::k) ? "k" : "k_rope";
  const bool have_k = h.records(capture_item::k) || h.records(capture_item::k_rope);
  const bool have_v = h.records(capture_item::v);
  const std::int64_t rows = std::min(max_rows, h.n_tokens);
  if ((!have_k && !have_v) || rows < 2) return;
  out << "  K (" << (kname == "k" ? "before RoPE" : "after RoPE") << ") and V over the first "
      << rows
      << " tokens: variance in the top 8 / 32 principal components, channel outliers (max/mean of "
         "per-channel mean |x|), max |x|\n";
  out << "    layer head |   K top8  top32  ch max/mean   max|x| |   V top8  top32  ch max/mean   "
         "max|x|\n";
  for (int l : h.layers) {
    std::vector<head_summary> ks, vs;
    std::vector<float> buf;
    if (have_k) {
      buf.resize(static_cast<std::size_t>(rows * h.n_kv_heads * h.head_dim));
      r.read_rows(l, kname, 0, rows, buf.data());
      ks = summarize(buf, rows, h.n_kv_heads, h.head_dim);
    }
    if (have_v) {
      buf.resize(static_cast<std::size_t>(rows * h.n_kv_heads * h.head_dim));
      r.read_rows(l, "v", 0, rows, buf.data());
      vs = summarize(buf, rows, h.n_kv_heads, h.head_dim);
    }
    for (std::int64_t g = 0; g < h.n_kv_heads; ++g) {
      char line[200];
      auto part = [&](const std::vector<head_summary>& s) {
        char b[96];
        if (s.empty()) return std::string("          -      -            -        -");
        const head_summary& x = s[static_cast<std::size_t>(g)];
        std::snprintf(b, sizeof b, "  %5.1f%%  %5.1f%%  %11.2f  %7.3g", 100 * x.top8, 100 * x.top32,
                      x.outlier, x.max_abs);
        return std::string(b);
      };
      std::snprintf(line, sizeof line, "    %5d %4lld | %s | %s\n", l, static_cast<long long>(g),
                    part(ks).c_str(), part(vs).c_str());
      out << line;
    }
  }
}

}  // namespace kvcal
