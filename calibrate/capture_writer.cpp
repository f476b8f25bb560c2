#include "calibrate/capture_writer.h"

#include <nlohmann/json.hpp>

#include "calibrate/capture_reader.h"
#include "calibrate/h5_chunk_writer.h"
#include "kernels/common/error.h"

namespace kvcal {

std::int64_t capture_chunk_rows(std::int64_t seq_len, std::int64_t row_bytes) {
  const std::int64_t limit = 4 << 20;
  if (seq_len * row_bytes <= limit) return seq_len;
  std::int64_t best = 1;
  for (std::int64_t d = 1; d <= seq_len; ++d)
    if (seq_len % d == 0 && d * row_bytes <= limit) best = d;
  // Only tiny divisors (e.g. a prime seq_len): one chunk per sequence beats 1-row chunks.
  return best * 16 < seq_len && best < 64 ? seq_len : best;
}

capture_writer::capture_writer(h5_file f, capture_header h)
    : f_(std::move(f)), h_(std::move(h)), threads_(h5_default_write_threads()) {}

void write_capture_header(h5_file& f, const capture_header& h) {
  nlohmann::json record = nlohmann::json::array(), layers = nlohmann::json::array();
  for (capture_item it : h.record) record.push_back(capture_item_name(it));
  for (int l : h.layers) layers.push_back(l);
  f.set_attr("format", capture_format_name);
  f.set_attr("version", std::int64_t{capture_format_version});
  f.set_attr("model", h.model_json);
  f.set_attr("tokenizer_sha256", h.tokenizer_sha256);
  f.set_attr("inputs", h.inputs_json);
  f.set_attr("seq_len", h.seq_len);
  f.set_attr("n_layers", h.n_layers);
  f.set_attr("n_kv_heads", h.n_kv_heads);
  f.set_attr("n_heads", h.n_heads);
  f.set_attr("head_dim", h.head_dim);
  f.set_attr("hidden_size", h.hidden_size);
  f.set_attr("dtype", h.dtype);
  f.set_attr("record", record.dump());
  f.set_attr("layers", layers.dump());
  f.set_attr("attn_window", h.attn_window);
  if (h.sliding_window >= 0) f.set_attr("sliding_window", h.sliding_window);
  f.set_attr("compression", h.compress ? "shuffle+deflate1" : "none");
  f.set_attr("options", h.options_json);
  f.set_attr("kvcal_version", h.kvcal_version);
  f.set_attr("command_line", h.command_line);
}

namespace {
h5_elem elem_of(const capture_header& h, const std::string& name) {
  if (name.rfind("attn_", 0) == 0) return h5_elem::f32;
  KVCAL_CHECK(h.dtype == "float16" || h.dtype == "float32", "capture dtype '", h.dtype,
              "' is not float16 or float32");
  return h.dtype == "float16" ? h5_elem::f16 : h5_elem::f32;
}
}  // namespace

void capture_writer::open_datasets(bool create) {
  const std::string& where = f_.path();
  h5_dataset_options o;
  o.compress = h_.compress;
  auto add = [&](const std::string& path, h5_elem e, const std::vector<std::int64_t>& inner) {
    if (create) {
      std::int64_t row_bytes = static_cast<std::int64_t>(h5_elem_size(e));
      for (auto v : inner) row_bytes *= v;
      o.chunk_rows = capture_chunk_rows(h_.seq_len, row_bytes);
      ds_[path] = h5_dataset::create(f_.id(), path, e, inner, o, where);
    } else {
      ds_[path] = h5_dataset::open(f_.id(), path, where, 0);
      KVCAL_CHECK(ds_[path].dtype() == e && ds_[path].inner() == inner, where, ": dataset ", path,
                  " does not have the type / shape its header implies");
    }
  };
  add(capture_ids_path, h5_elem::i32, {});
  add(capture_seq_path, h5_elem::i32, {});
  add(capture_pos_path, h5_elem::i32, {});
  for (int l : h_.layers)
    for (capture_item it : h_.record)
      for (const auto& name : capture_item_datasets(it))
        add(capture_layer_path(l, name), elem_of(h_, name), h_.inner_shape(name));
}

capture_writer capture_writer::create(const std::string& path, const capture_header& h) {
  capture_writer w(h5_file::create_append(path), h);
  w.h_.n_tokens = w.h_.n_sequences = 0;
  w.h_.complete = false;
  write_capture_header(w.f_, w.h_);
  w.f_.set_attr("n_tokens", std::int64_t{0});
  w.f_.set_attr("n_sequences", std::int64_t{0});
  w.f_.set_attr("complete", std::int64_t{0});
  w.open_datasets(true);
  w.f_.flush();
  return w;
}

capture_writer capture_writer::reopen(const std::string& path,
                                      const std::function<void(const capture_header&)>& check) {
  h5_file f = h5_file::open_append(path);
  capture_header h = read_capture_header(f);
  if (check) check(h);
  capture_writer w(std::move(f), std::move(h));
  w.open_datasets(false);
  for (auto& [name, d] : w.ds_) {
    KVCAL_CHECK(d.rows() >= w.h_.n_tokens, path, ": dataset ", name, " has ", d.rows(),
                " rows, fewer than n_tokens = ", w.h_.n_tokens, " (damaged file)");
    if (d.rows() != w.h_.n_tokens) d.set_rows(w.h_.n_tokens);
  }
  if (w.h_.complete) w.f_.set_attr("complete", std::int64_t{0});
  w.f_.flush();
  return w;
}

void capture_writer::write(const std::string& dataset, const void* data, std::int64_t n) {
  auto it = ds_.find(dataset);
  KVCAL_ASSERT(it != ds_.end(), "capture_writer: no dataset ", dataset);
  it->second.write_rows(h_.n_tokens, n, data);
}

void capture_writer::write(const std::vector<std::pair<std::string, const void*>>& data,
                           std::int64_t n) {
  std::vector<h5_row_block> blocks;
  for (const auto& [name, rows] : data) {
    auto it = ds_.find(name);
    KVCAL_ASSERT(it != ds_.end(), "capture_writer: no dataset ", name);
    blocks.push_back({&it->second, h_.n_tokens, n, rows});
  }
  h5_write_blocks(blocks, threads_);
}

void capture_writer::set_write_threads(int n) {
  KVCAL_CHECK(n >= 1, "write threads must be >= 1, not ", n);
  threads_ = n;
}

void capture_writer::commit(std::int64_t n, std::int64_t sequences) {
  for (auto& [name, d] : ds_)
    KVCAL_ASSERT(d.rows() == h_.n_tokens + n, "capture_writer: dataset ", name, " has ", d.rows(),
                 " rows at commit, expected ", h_.n_tokens + n);
  f_.flush();  // data and extents first ...
  h_.n_tokens += n;
  h_.n_sequences += sequences;
  f_.set_attr("n_tokens", h_.n_tokens);  // ... then the count that makes them valid
  f_.set_attr("n_sequences", h_.n_sequences);
  f_.flush();
}

void capture_writer::finish() {
  for (auto& [name, d] : ds_)
    KVCAL_ASSERT(d.rows() == h_.n_tokens, "capture_writer: uncommitted rows in ", name);
  h_.complete = true;
  f_.set_attr("complete", std::int64_t{1});
  f_.flush();
}

}  // namespace kvcal
