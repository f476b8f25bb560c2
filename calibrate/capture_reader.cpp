#include "calibrate/capture_reader.h"

#include <nlohmann/json.hpp>

#include "kernels/common/error.h"

namespace kvcal {

capture_header read_capture_header(const h5_file& f) {
  const std::string& p = f.path();
  KVCAL_CHECK(f.has_attr("format"), p, ": not a kvcal capture (no 'format' attribute)");
  const std::string format = f.get_string_attr("format");
  KVCAL_CHECK(format == capture_format_name, p, ": not a kvcal capture (format '", format,
              "', expected '", capture_format_name, "')");
  const std::int64_t version = f.get_int_attr("version");
  KVCAL_CHECK(version == capture_format_version, p, ": capture format version ", version,
              " is not supported (this kvcal reads version ", capture_format_version, ")");
  capture_header h;
  h.model_json = f.get_string_attr("model");
  h.tokenizer_sha256 = f.get_string_attr("tokenizer_sha256");
  h.inputs_json = f.get_string_attr("inputs");
  h.seq_len = f.get_int_attr("seq_len");
  h.n_layers = f.get_int_attr("n_layers");
  h.n_kv_heads = f.get_int_attr("n_kv_heads");
  h.n_heads = f.get_int_attr("n_heads");
  h.head_dim = f.get_int_attr("head_dim");
  h.hidden_size = f.get_int_attr("hidden_size");
  h.dtype = f.get_string_attr("dtype");
  KVCAL_CHECK(h.dtype == "float16" || h.dtype == "float32", p, ": dtype '", h.dtype,
              "' is not float16 or float32");
  try {
    for (const auto& it : nlohmann::json::parse(f.get_string_attr("record"))) {
      auto item = parse_capture_item(it.get<std::string>());
      KVCAL_CHECK(item, p, ": unknown recorded item '", it.get<std::string>(), "'");
      h.record.push_back(*item);
    }
    for (const auto& l : nlohmann::json::parse(f.get_string_attr("layers"))) {
      const int layer = l.get<int>();
      KVCAL_CHECK(layer >= 0 && layer < h.n_layers, p, ": recorded layer ", layer, " out of range");
      h.layers.push_back(layer);
    }
  } catch (const nlohmann::json::exception& e) {
    KVCAL_FAIL(p, ": malformed 'record' / 'layers' attribute: ", e.what());
  }
  h.attn_window = f.get_int_attr("attn_window");
  // Optional: captures written before it was recorded do not have it.
  if (f.has_attr("sliding_window")) {
    h.sliding_window = f.get_int_attr("sliding_window");
    KVCAL_CHECK(h.sliding_window >= 0, p, ": sliding_window ", h.sliding_window, " is negative");
  }
  h.compress = f.get_string_attr("compression") != "none";
  h.options_json = f.get_string_attr("options");
  h.kvcal_version = f.get_string_attr("kvcal_version");
  h.command_line = f.get_string_attr("command_line");
  h.n_tokens = f.get_int_attr("n_tokens");
  h.n_sequences = f.get_int_attr("n_sequences");
  h.complete = f.get_int_attr("complete") != 0;
  return h;
}

capture_reader::capture_reader(const std::string& path, bool allow_incomplete)
    : f_(h5_file::open_read(path)), h_(read_capture_header(f_)) {
  KVCAL_CHECK(h_.complete || allow_incomplete, path,
              ": capture is incomplete (interrupted?); finish it with kvcal capture --resume");
}

const h5_dataset& capture_reader::dataset(const std::string& path) const {
  auto it = ds_.find(path);
  if (it == ds_.end()) {
    it = ds_.emplace(path, h5_dataset::open(f_.id(), path, f_.path())).first;
    KVCAL_CHECK(it->second.rows() >= h_.n_tokens, f_.path(), ": dataset ", path, " has ",
                it->second.rows(), " rows, fewer than n_tokens = ", h_.n_tokens);
  }
  return it->second;
}

bool capture_reader::has(int layer, const std::string& name) const {
  return h5_path_exists(f_.id(), capture_layer_path(layer, name));
}

std::vector<std::int64_t> capture_reader::inner_shape(int layer, const std::string& name) const {
  return dataset(capture_layer_path(layer, name)).inner();
}

std::int64_t capture_reader::row_elems(int layer, const std::string& name) const {
  return dataset(capture_layer_path(layer, name)).row_elems();
}

void capture_reader::read_rows(int layer, const std::string& name, std::int64_t row0,
                               std::int64_t n, float* out) const {
  KVCAL_CHECK(row0 >= 0 && n >= 0 && row0 + n <= h_.n_tokens, f_.path(), ": rows ", row0, "..",
              row0 + n, " of layer ", layer, " ", name, " beyond the ", h_.n_tokens,
              " captured tokens");
  KVCAL_CHECK(has(layer, name), f_.path(), ": layer ", layer, " has no '", name,
              "' (recorded: see kvcal inspect)");
  dataset(capture_layer_path(layer, name)).read_rows_float(row0, n, out);
}

std::vector<std::int32_t> capture_reader::read_tokens(const std::string& name, std::int64_t row0,
                                                      std::int64_t n) const {
  KVCAL_CHECK(row0 >= 0 && n >= 0 && row0 + n <= h_.n_tokens, f_.path(), ": token rows ", row0,
              "..", row0 + n, " beyond the ", h_.n_tokens, " captured tokens");
  const h5_dataset& d = dataset("/tokens/" + name);
  KVCAL_CHECK(d.dtype() == h5_elem::i32, f_.path(), ": /tokens/", name, " is not int32");
  std::vector<std::int32_t> v(static_cast<std::size_t>(n));
  d.read_rows(row0, n, v.data());
  return v;
}

}  // namespace kvcal
