#include "train/train_common.h"

#include <ATen/detail/CUDAHooksInterface.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

#include "kernels/common/error.h"
#include "model/torch_util.h"
#include "runtime/preset_recipe.h"
#include "runtime/rope.h"

namespace kvcal {

at::Device training_device(const std::string& name) {
  if (name == "auto") {
    const bool gpu = at::hasCUDA() && at::detail::getCUDAHooks().getNumGPUs() > 0;
    return gpu ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  }
  return parse_device(name, "--device");
}

double cosine_lr(std::int64_t step, std::int64_t total, double lr) {
  total = std::max<std::int64_t>(total, 1);
  const std::int64_t warm = std::min<std::int64_t>(100, total / 20);
  if (step < warm) return lr * static_cast<double>(step + 1) / static_cast<double>(warm);
  const double t = static_cast<double>(step - warm) /
                   static_cast<double>(std::max<std::int64_t>(total - warm, 1));
  const double c = 0.5 * (1.0 + std::cos(M_PI * std::min(t, 1.0)));
  return lr * (0.1 + 0.9 * c);
}

nlohmann::json fingerprint_json(const std::string& model_json) {
  try {
    return nlohmann::json::parse(model_json);
  } catch (const nlohmann::json::exception& e) {
    KVCAL_FAIL("the capture's model fingerprint is not JSON: ", e.what());
  }
}

torch_rope::torch_rope(const std::string& model_json, std::int64_t head_dim, std::int64_t seq_len) {
  // The fingerprint's rope object is the preset's; parse it through the preset recipe parser (a
  // one-layer-per-model recipe with nothing compressed) so both read it the same way.
  nlohmann::json fp = fingerprint_json(model_json);
  nlohmann::json recipe = {{"format", preset_format_name},
                           {"version", preset_format_version},
                           {"name", "train"},
                           {"model", fp}};
  nlohmann::json layers = nlohmann::json::array();
  for (std::int64_t l = 0; l < fp.value("n_layers", std::int64_t{0}); ++l)
    layers.push_back({{"k", "none"}, {"v", "none"}});
  recipe["layers"] = layers;
  const preset_recipe r = parse_recipe(recipe, "capture model fingerprint");
  // The capture does not store max_position_embeddings: below it dynamic NTK equals default RoPE,
  // and llama3 / yarn use original_max_position_embeddings from the fingerprint.
  const rope_frequencies f =
      rope_inv_freq(r.model.rope, static_cast<int>(head_dim), std::max<std::int64_t>(seq_len, 1));
  inv_freq_ = at::tensor(f.inv_freq, at::kFloat);
  scaling_ = f.attention_scaling;
}

at::Tensor torch_rope::apply(const at::Tensor& x, const at::Tensor& pos) const {
  const std::int64_t d = x.size(-1), half = d / 2;
  at::Tensor ang =
      pos.to(x.device(), at::kFloat).unsqueeze(1) * inv_freq_.to(x.device()).unsqueeze(0);
  at::Tensor c = (ang.cos() * scaling_).to(x.scalar_type());  // [T, d/2]
  at::Tensor s = (ang.sin() * scaling_).to(x.scalar_type());
  at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  return at::cat({x1 * c - x2 * s, x2 * c + x1 * s}, -1);
}

at::Tensor sequence_attention_probs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& pos,
                                    std::int64_t window) {
  const std::int64_t d = q.size(-1);
  at::Tensor s = at::matmul(q.to(at::kFloat), k.to(at::kFloat).unsqueeze(-3).transpose(-1, -2)) /
                 std::sqrt(static_cast<double>(d));  // [..., rep, T, T]
  const at::Tensor p = pos.to(q.device(), at::kLong);
  const at::Tensor diff = p.unsqueeze(1) - p.unsqueeze(0);  // [T, T]: query - key position
  at::Tensor seen = diff.ge(0);
  if (window > 0) seen = seen.logical_and(diff.lt(window));
  return at::softmax(s.masked_fill(seen.logical_not(), -std::numeric_limits<float>::infinity()),
                     -1);
}

std::string line_chart_svg(const std::string& title, const std::string& y_label,
                           const std::vector<int>& x, const std::vector<svg_series>& series) {
  std::vector<std::string> labels;
  for (int v : x) labels.push_back(std::to_string(v));
  return line_chart_svg(title, "layer", y_label, labels, series);
}

std::string line_chart_svg(const std::string& title, const std::string& x_label,
                           const std::string& y_label, const std::vector<std::string>& x,
                           const std::vector<svg_series>& series) {
  const double W = 640, H = 360, L = 60, R = 170, T = 40, B = 50;
  double ymax = 0;
  for (const auto& s : series)
    for (double v : s.y)
      if (std::isfinite(v)) ymax = std::max(ymax, v);
  if (ymax <= 0) ymax = 1;
  ymax *= 1.1;
  const std::size_t n = x.size();
  auto px = [&](std::size_t i) {
    return L + (n > 1 ? (W - L - R) * static_cast<double>(i) / static_cast<double>(n - 1)
                      : (W - L - R) / 2);
  };
  auto py = [&](double v) { return T + (H - T - B) * (1.0 - v / ymax); };
  std::ostringstream os;
  os.precision(4);
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
     << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" "
        "fill=\"white\"/>\n<text x=\""
     << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">" << title << "</text>\n";
  os << "<line x1=\"" << L << "\" y1=\"" << H - B << "\" x2=\"" << W - R << "\" y2=\"" << H - B
     << "\" stroke=\"black\"/>\n<line x1=\"" << L << "\" y1=\"" << T << "\" x2=\"" << L
     << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n";
  for (int k = 0; k <= 4; ++k) {
    const double v = ymax * k / 4;
    os << "<text x=\"" << L - 6 << "\" y=\"" << py(v) + 4 << "\" text-anchor=\"end\">" << v
       << "</text>\n";
  }
  for (std::size_t i = 0; i < n; ++i)
    os << "<text x=\"" << px(i) << "\" y=\"" << H - B + 16 << "\" text-anchor=\"middle\">" << x[i]
       << "</text>\n";
  os << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 12 << "\" text-anchor=\"middle\">"
     << x_label << "</text>\n<text x=\"14\" y=\"" << (T + H - B) / 2
     << "\" transform=\"rotate(-90 14 " << (T + H - B) / 2 << ")\" text-anchor=\"middle\">"
     << y_label << "</text>\n";
  for (std::size_t s = 0; s < series.size(); ++s) {
    const svg_series& sr = series[s];
    os << "<polyline fill=\"none\" stroke=\"" << sr.color << "\" stroke-width=\"2\""
       << (sr.dashed ? " stroke-dasharray=\"6 4\"" : "") << " points=\"";
    for (std::size_t i = 0; i < n && i < sr.y.size(); ++i)
      if (std::isfinite(sr.y[i])) os << px(i) << "," << py(sr.y[i]) << " ";
    os << "\"/>\n";
    const double ly = T + 16 * static_cast<double>(s);
    os << "<line x1=\"" << W - R + 10 << "\" y1=\"" << ly << "\" x2=\"" << W - R + 34 << "\" y2=\""
       << ly << "\" stroke=\"" << sr.color << "\" stroke-width=\"2\""
       << (sr.dashed ? " stroke-dasharray=\"6 4\"" : "") << "/>\n<text x=\"" << W - R + 40
       << "\" y=\"" << ly + 4 << "\">" << sr.name << "</text>\n";
  }
  os << "</svg>\n";
  return os.str();
}

void f32_tensor_file::add(const std::string& name, const at::Tensor& t) {
  const at::Tensor c = t.detach().to(at::kCPU, at::kFloat).contiguous();
  store_.emplace_back(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  tensor_out o{name, st_dtype::F32, {}, store_.back().data()};
  for (auto v : c.sizes()) o.shape.push_back(v);
  tensors_.push_back(o);
}

void f32_tensor_file::write(const std::string& path,
                            const std::map<std::string, std::string>& metadata) const {
  write_safetensors(path, tensors_, metadata);
}

std::string output_stem(const std::string& path) {
  const std::string ext = ".safetensors";
  if (path.size() > ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0)
    return path.substr(0, path.size() - ext.size());
  return path;
}

}  // namespace kvcal
