#include "calibrate/capture.h"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include "calibrate/attention_stats.h"
#include "calibrate/capture_reader.h"
#include "calibrate/capture_writer.h"
#include "kernels/common/build_info.h"
#include "kernels/common/error.h"
#include "kernels/common/log.h"
#include "kernels/common/progress.h"
#include "model/full_cache.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "model/torch_util.h"
#include "runtime/io/atomic_file.h"
#include "runtime/io/sha256.h"
#include "runtime/model_config.h"
#include "runtime/preset_recipe.h"

namespace kvcal {

using nlohmann::json;

// ---- option parsing -------------------------------------------------------------------------

std::vector<capture_item> parse_record_list(const std::string& list) {
  std::vector<bool> want(all_capture_items().size(), false);
  std::stringstream ss(list);
  std::string item;
  bool any = false;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    auto it = parse_capture_item(item);
    KVCAL_CHECK(it, "--record: unknown item '", item,
                "' (expected a comma list of k, k_rope, v, q, hidden, attn)");
    want[static_cast<std::size_t>(*it)] = true;
    any = true;
  }
  KVCAL_CHECK(any, "--record: empty list (expected a comma list of k, k_rope, v, q, hidden, attn)");
  std::vector<capture_item> out;
  for (capture_item it : all_capture_items())
    if (want[static_cast<std::size_t>(it)]) out.push_back(it);
  return out;
}

std::vector<int> parse_layer_list(const std::string& list, std::int64_t n_layers) {
  std::vector<bool> want(static_cast<std::size_t>(n_layers), false);
  if (list == "all") {
    want.assign(want.size(), true);
  } else {
    std::stringstream ss(list);
    std::string part;
    while (std::getline(ss, part, ',')) {
      if (part.empty()) continue;
      std::int64_t a = 0, b = 0;
      try {
        std::size_t dash = part.find('-', 1);
        std::size_t used = 0;
        a = std::stoll(part.substr(0, dash), &used);
        KVCAL_CHECK(used == (dash == std::string::npos ? part.size() : dash), "");
        b = a;
        if (dash != std::string::npos) {
          b = std::stoll(part.substr(dash + 1), &used);
          KVCAL_CHECK(used == part.size() - dash - 1, "");
        }
      } catch (const std::exception&) {
        KVCAL_FAIL("--layers: '", part, "' is not a layer index or range (e.g. all | 0,2,5-7)");
      }
      KVCAL_CHECK(a >= 0 && b >= a && b < n_layers, "--layers: '", part,
                  "' is outside the model's layers 0..", n_layers - 1);
      for (std::int64_t l = a; l <= b; ++l) want[static_cast<std::size_t>(l)] = true;
    }
  }
  std::vector<int> out;
  for (std::int64_t l = 0; l < n_layers; ++l)
    if (want[static_cast<std::size_t>(l)]) out.push_back(static_cast<int>(l));
  KVCAL_CHECK(!out.empty(), "--layers: no layer selected");
  return out;
}

std::int64_t find_invalid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    std::size_t len = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return static_cast<std::int64_t>(i);
    }
    if (i + len > n) return static_cast<std::int64_t>(i);
    for (std::size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return static_cast<std::int64_t>(i);
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are invalid.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
      return static_cast<std::int64_t>(i);
    i += len;
  }
  return -1;
}

namespace {

// ---- inputs ---------------------------------------------------------------------------------

struct input_file {
  std::string path, sha256;
  std::int64_t bytes = 0;
};

std::string read_text_file(const std::string& path) {
  struct stat st {};
  KVCAL_CHECK(::stat(path.c_str(), &st) == 0, path, ": no such file");
  KVCAL_CHECK(S_ISREG(st.st_mode), path, ": not a regular file");
  std::ifstream f(path, std::ios::binary);
  KVCAL_CHECK(f, path, ": cannot read");
  std::ostringstream os;
  os << f.rdbuf();
  std::string s = os.str();
  KVCAL_CHECK(!s.empty(), path, ": empty file (no text to capture)");
  const std::int64_t bad = find_invalid_utf8(s);
  KVCAL_CHECK(bad < 0, path, ": not valid UTF-8 (byte offset ", bad, ")");
  return s;
}

// A sequence: [begin, begin + len) of the token stream.
struct sequence {
  std::int64_t begin = 0, len = 0;
};

std::vector<sequence> cut_sequences(std::int64_t n_tokens, std::int64_t seq_len, std::uint64_t seed,
                                    std::int64_t max_tokens) {
  std::vector<sequence> seqs;
  for (std::int64_t b = 0; b + seq_len <= n_tokens; b += seq_len) seqs.push_back({b, seq_len});
  if (seed != 0) {  // Fisher-Yates with mt19937_64: the same order on every platform
    std::mt19937_64 rng(seed);
    for (std::size_t i = seqs.size(); i > 1; --i)
      std::swap(seqs[i - 1], seqs[static_cast<std::size_t>(rng() % i)]);
  }
  const std::int64_t rem = n_tokens % seq_len;
  if (rem > 0) seqs.push_back({n_tokens - rem, rem});
  if (max_tokens > 0) {
    std::int64_t total = 0;
    std::size_t i = 0;
    for (; i < seqs.size() && total < max_tokens; ++i) {
      seqs[i].len = std::min(seqs[i].len, max_tokens - total);
      total += seqs[i].len;
    }
    seqs.resize(i);
  }
  return seqs;
}

// ---- resume ---------------------------------------------------------------------------------

std::string short_value(const json& v) {
  std::string s = v.is_string() ? v.get<std::string>() : v.dump();
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

// Every difference between what the partial file records and this run, one per entry.
std::vector<std::string> header_differences(const capture_header& old, const capture_header& now) {
  std::vector<std::string> d;
  auto cmp_objects = [&](const std::string& what, const std::string& a, const std::string& b) {
    if (a == b) return;
    json ja = json::parse(a, nullptr, false), jb = json::parse(b, nullptr, false);
    if (ja.is_object() && jb.is_object()) {
      for (const auto& [k, v] : ja.items())
        if (!jb.contains(k) || jb[k] != v)
          d.push_back(what + "." + k + ": " + short_value(v) + " in the partial capture, " +
                      (jb.contains(k) ? short_value(jb[k]) : "absent") + " now");
      for (const auto& [k, v] : jb.items())
        if (!ja.contains(k))
          d.push_back(what + "." + k + ": absent in the partial capture, " + short_value(v) +
                      " now");
    } else {
      d.push_back(what + ": " + short_value(a) + " in the partial capture, " + short_value(b) +
                  " now");
    }
  };
  cmp_objects("model", old.model_json, now.model_json);
  if (old.tokenizer_sha256 != now.tokenizer_sha256)
    d.push_back("tokenizer sha256: " + old.tokenizer_sha256 + " in the partial capture, " +
                now.tokenizer_sha256 + " now");
  if (old.inputs_json != now.inputs_json)
    d.push_back("inputs: " + short_value(json::parse(old.inputs_json, nullptr, false)) +
                " in the partial capture, " +
                short_value(json::parse(now.inputs_json, nullptr, false)) + " now");
  cmp_objects("options", old.options_json, now.options_json);
  return d;
}

// ---- host buffers and the writer thread -------------------------------------------------------

// One batch worth of rows: tokens and every recorded dataset, in host memory.
struct batch_buffers {
  std::vector<std::int32_t> ids, seq, pos;
  std::map<std::string, at::Tensor> data;  // dataset path -> [rows_capacity, inner...]
  std::int64_t rows = 0, sequences = 0;
};

class writer_thread {
 public:
  writer_thread(capture_writer& w, std::function<void(std::int64_t)> on_commit,
                std::function<void(std::int64_t)> before_commit)
      : w_(w),
        on_commit_(std::move(on_commit)),
        before_commit_(std::move(before_commit)),
        t_([this] { loop(); }) {}
  ~writer_thread() {
    {
      std::lock_guard<std::mutex> l(m_);
      stop_ = true;
    }
    cv_.notify_all();
    t_.join();
  }
  // Waits until the previous batch is committed, then hands over `b` (which must stay untouched
  // until the next submit() or drain() returns).
  void submit(batch_buffers* b) {
    std::unique_lock<std::mutex> l(m_);
    wait(l);
    rethrow();
    pending_ = b;
    cv_.notify_all();
  }
  void drain() {
    std::unique_lock<std::mutex> l(m_);
    wait(l);
    rethrow();
  }
  // Seconds submit() and drain() spent waiting for the previous batch to be committed.
  double wait_seconds() const { return wait_s_; }
  std::int64_t bytes() const { return bytes_.load(); }
  std::int64_t committed_sequences() const { return committed_.load(); }

 private:
  void wait(std::unique_lock<std::mutex>& l) {
    const auto t0 = std::chrono::steady_clock::now();
    cv_.wait(l, [&] { return pending_ == nullptr; });
    wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  void rethrow() {
    if (err_) {
      auto e = err_;
      err_ = nullptr;
      std::rethrow_exception(e);
    }
  }
  void loop() {
    for (;;) {
      batch_buffers* b = nullptr;
      {
        std::unique_lock<std::mutex> l(m_);
        cv_.wait(l, [&] { return stop_ || pending_ != nullptr; });
        if (pending_ == nullptr) return;
        b = pending_;
      }
      try {
        if (!err_) write(*b);
      } catch (...) {
        err_ = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> l(m_);
        pending_ = nullptr;
      }
      cv_.notify_all();
    }
  }
  void write(const batch_buffers& b) {
    std::vector<std::pair<std::string, const void*>> rows = {{capture_ids_path, b.ids.data()},
                                                             {capture_seq_path, b.seq.data()},
                                                             {capture_pos_path, b.pos.data()}};
    for (const auto& [path, t] : b.data) rows.emplace_back(path, t.data_ptr());
    w_.write(rows, b.rows);
    if (before_commit_) before_commit_(w_.header().n_sequences + b.sequences);
    w_.commit(b.rows, b.sequences);
    bytes_ = w_.file_bytes();
    committed_ = w_.header().n_sequences;
    if (on_commit_) on_commit_(w_.header().n_sequences);
  }

  capture_writer& w_;
  std::function<void(std::int64_t)> on_commit_, before_commit_;
  std::mutex m_;
  std::condition_variable cv_;
  batch_buffers* pending_ = nullptr;
  bool stop_ = false;
  std::exception_ptr err_;
  double wait_s_ = 0.0;  // forward thread only
  std::atomic<std::int64_t> bytes_{0}, committed_{0};
  std::thread t_;  // last: starts after the members it uses exist
};

// The layer hook: converts what is recorded to the stored layout ([B*T, heads, d] rows) and
// copies it into the current batch's host buffers (asynchronously from CUDA into pinned memory).
class capture_hook : public layer_hook {
 public:
  capture_hook(const capture_header& h, at::ScalarType store, std::int64_t sliding_window)
      : h_(h),
        store_(store),
        sliding_(sliding_window),
        want_(static_cast<std::size_t>(h.n_layers)) {
    for (int l : h.layers) want_[static_cast<std::size_t>(l)] = true;
  }
  void begin(batch_buffers* b) {
    b_ = b;
    overflow_ = at::Tensor();
    overflow_layer_ = -1;
  }
  // The flag tensor whose host copy synchronizes the device (and reports fp16 overflow).
  at::Tensor overflow() const { return overflow_; }

  void on_layer(const layer_activations& a) override {
    if (a.layer < 0 || a.layer >= h_.n_layers || !want_[static_cast<std::size_t>(a.layer)]) return;
    const std::int64_t B = a.k.size(0), T = a.k.size(2);
    auto put = [&](const std::string& name, const at::Tensor& rows /* [B, T, ...] */,
                   bool activation) {
      at::Tensor src = activation ? rows.to(store_) : rows.to(at::kFloat);
      if (activation && store_ == at::kHalf && rows.scalar_type() != at::kHalf) {
        at::Tensor inf = src.isinf().any();
        overflow_ = overflow_.defined() ? overflow_.logical_or(inf) : inf;
      }
      at::Tensor& dst = b_->data.at(capture_layer_path(a.layer, name));
      dst.narrow(0, 0, B * T).view(src.sizes()).copy_(src, /*non_blocking=*/true);
    };
    for (capture_item it : h_.record) {
      switch (it) {
        case capture_item::k:
          put("k", a.k.transpose(1, 2), true);
          break;
        case capture_item::k_rope:
          put("k_rope", a.k_rope.transpose(1, 2), true);
          break;
        case capture_item::v:
          put("v", a.v.transpose(1, 2), true);
          break;
        case capture_item::q:
          put("q", a.q.transpose(1, 2), true);
          break;
        case capture_item::hidden:
          put("hidden", a.hidden, true);
          break;
        case capture_item::attn: {
          attention_stats s =
              compute_attention_stats(a.q_rope, a.k_rope, a.positions, h_.attn_window, sliding_);
          put("attn_cum", s.cum.transpose(1, 2), false);
          put("attn_next", s.next.transpose(1, 2), false);
          put("attn_max", s.max.transpose(1, 2), false);
          break;
        }
      }
    }
    if (!overflow_.defined()) overflow_ = at::zeros({}, a.k.options().dtype(at::kBool));
  }

 private:
  const capture_header& h_;
  at::ScalarType store_;
  std::int64_t sliding_;
  std::vector<bool> want_;
  batch_buffers* b_ = nullptr;
  at::Tensor overflow_;
  int overflow_layer_ = -1;
};

std::string json_inputs(const std::vector<input_file>& in) {
  json a = json::array();
  for (const auto& f : in)
    a.push_back({{"path", f.path}, {"sha256", f.sha256}, {"bytes", f.bytes}});
  return a.dump();
}

}  // namespace

// ---- the run --------------------------------------------------------------------------------

capture_result run_capture(const capture_params& params) {
  capture_params p = params;  // seq_len resolved below
  const auto t0 = std::chrono::steady_clock::now();
  KVCAL_CHECK(!p.model_dir.empty(), "--model is required");
  KVCAL_CHECK(!p.text_files.empty(), "--text: give at least one text file");
  KVCAL_CHECK(!p.out.empty(), "--out is required");
  KVCAL_CHECK(p.seq_len >= 0, "--seq-len must be >= 1 (or 0 for the default)");
  KVCAL_CHECK(p.batch >= 1, "--batch must be >= 1");
  KVCAL_CHECK(p.max_tokens >= 0, "--max-tokens must be >= 0");
  KVCAL_CHECK(p.attn_window >= 1, "--attn-window must be >= 1");
  const std::vector<capture_item> record = parse_record_list(p.record);
  const model_config cfg = read_model_config(p.model_dir + "/config.json");
  const std::vector<int> layers = parse_layer_list(p.layers, cfg.num_hidden_layers);
  if (p.seq_len == 0)
    p.seq_len = cfg.max_position_embeddings > 0
                    ? std::min<std::int64_t>(2048, cfg.max_position_embeddings)
                    : 2048;
  KVCAL_CHECK(cfg.max_position_embeddings <= 0 || p.seq_len <= cfg.max_position_embeddings,
              "--seq-len ", p.seq_len, " is beyond the model's context (max_position_embeddings ",
              cfg.max_position_embeddings, " in ", p.model_dir, "/config.json)");
  const at::Device device = parse_device(p.device);
  const at::ScalarType compute = p.dtype == "auto" ? (device.is_cuda() ? at::kBFloat16 : at::kFloat)
                                                   : parse_compute_dtype(p.dtype);
  KVCAL_CHECK(device.is_cuda() || compute == at::kFloat, "--dtype ", compute_dtype_name(compute),
              ": the CPU forward runs in fp32 only (use --dtype fp32)");
  std::string store = p.store;
  if (store == "auto") store = compute == at::kFloat ? "float32" : "float16";
  if (store == "fp16") store = "float16";
  if (store == "fp32") store = "float32";
  KVCAL_CHECK(store == "float16" || store == "float32", "--store ", p.store,
              ": expected float16, float32 or auto");

  atomic_output out(p.out);  // checks the output directory now, before any work
  // A partial file is never removed on failure: an existing one may be resumed later, and one this
  // run creates is resumable once created.
  out.keep_partial_on_failure();
  const std::string partial = out.temp_path();

  capture_result res;
  auto seconds_since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };

  // Inputs and tokens.
  const auto t_tok = std::chrono::steady_clock::now();
  tokenizer tok = tokenizer::load(p.model_dir);
  std::vector<input_file> inputs;
  std::vector<std::int32_t> stream;
  for (const auto& path : p.text_files) {
    const std::string text = read_text_file(path);
    inputs.push_back({path, sha256_hex(text), static_cast<std::int64_t>(text.size())});
    std::vector<std::int32_t> ids = tok.encode(text, /*add_special_tokens=*/true);
    if (auto eos = tok.eos_id(); eos && (ids.empty() || ids.back() != *eos)) ids.push_back(*eos);
    stream.insert(stream.end(), ids.begin(), ids.end());
  }
  KVCAL_CHECK(!stream.empty(), "the inputs tokenize to no tokens");
  for (std::int32_t id : stream)
    KVCAL_CHECK(id >= 0 && id < cfg.vocab_size, "token id ", id, " from ", tok.source(),
                " is outside the model's vocabulary (", cfg.vocab_size, ")");
  const std::vector<sequence> seqs =
      cut_sequences(static_cast<std::int64_t>(stream.size()), p.seq_len, p.seed, p.max_tokens);
  res.tokenize_seconds = seconds_since(t_tok);
  std::int64_t total_tokens = 0;
  for (const auto& s : seqs) total_tokens += s.len;
  log_info("capture: ", inputs.size(), " file(s), ", stream.size(), " tokens; capturing ",
           total_tokens, " tokens in ", seqs.size(), " sequence(s) of <= ", p.seq_len);

  // The header of this run.
  capture_header h;
  {
    const model_fingerprint fp = fingerprint_of(cfg);
    h.model_json = json{{"model_type", fp.model_type},   {"n_layers", fp.n_layers},
                        {"n_kv_heads", fp.n_kv_heads},   {"head_dim", fp.head_dim},
                        {"rope", rope_to_json(fp.rope)}, {"config_sha256", fp.config_sha256}}
                       .dump();
  }
  h.tokenizer_sha256 = tok.sha256();
  h.inputs_json = json_inputs(inputs);
  h.seq_len = p.seq_len;
  h.n_layers = cfg.num_hidden_layers;
  h.n_kv_heads = cfg.num_key_value_heads;
  h.n_heads = cfg.num_attention_heads;
  h.head_dim = cfg.head_dim;
  h.hidden_size = cfg.hidden_size;
  h.dtype = store;
  h.record = record;
  h.layers = layers;
  h.attn_window = p.attn_window;
  h.sliding_window = cfg.sliding_window;
  h.compress = p.compress;
  {
    json rec = json::array(), lay = json::array();
    for (auto it : record) rec.push_back(capture_item_name(it));
    for (int l : layers) lay.push_back(l);
    h.options_json = json{{"seq_len", p.seq_len},
                          {"max_tokens", p.max_tokens},
                          {"seed", p.seed},
                          {"record", rec},
                          {"layers", lay},
                          {"attn_window", p.attn_window},
                          {"dtype", store},
                          {"compute_dtype", compute_dtype_name(compute)},
                          {"compression", p.compress ? "shuffle+deflate1" : "none"}}
                         .dump();
  }
  h.kvcal_version = std::string(build_version()) + " (" + build_commit() + ")";
  h.command_line = p.command_line;

  // Fresh file or resume.
  struct stat st {};
  const bool have_partial = ::stat(partial.c_str(), &st) == 0;
  std::optional<capture_writer> w;
  std::int64_t first_seq = 0;
  if (p.resume && have_partial) {
    w.emplace(capture_writer::reopen(partial, [&](const capture_header& old) {
      const auto diff = header_differences(old, h);
      if (!diff.empty()) {
        std::string msg;
        for (const auto& d : diff) msg += "\n  " + d;
        KVCAL_FAIL("cannot resume ", partial, ": it was captured with different settings (",
                   diff.size(), " difference", diff.size() > 1 ? "s" : "", "):", msg,
                   "\n  run without --resume to start over");
      }
      KVCAL_CHECK(old.n_sequences <= static_cast<std::int64_t>(seqs.size()), partial, ": holds ",
                  old.n_sequences, " sequences, more than this run has (", seqs.size(), ")");
      std::int64_t n = 0;
      for (std::int64_t i = 0; i < old.n_sequences; ++i) n += seqs[static_cast<std::size_t>(i)].len;
      KVCAL_CHECK(n == old.n_tokens, partial, ": n_tokens ", old.n_tokens, " does not match its ",
                  old.n_sequences, " sequences (", n, " tokens): damaged file");
    }));
    first_seq = w->header().n_sequences;
    log_info("capture: resuming ", partial, " after sequence ", first_seq, " (",
             w->header().n_tokens, " tokens)");
  } else {
    KVCAL_CHECK(!(p.resume && ::stat(p.out.c_str(), &st) == 0), p.out,
                " is already complete: nothing to resume (", partial, " does not exist)");
    if (p.resume)
      log_info("capture: no ", partial, " to resume; starting from the beginning");
    else if (have_partial)
      log_warn("capture: overwriting the interrupted ", partial, " (use --resume to continue it)");
  }

  // The model (after every check that can fail quickly).
  const auto t_load = std::chrono::steady_clock::now();
  const llama_model model = llama_model::load(p.model_dir, device, compute);
  res.load_seconds = seconds_since(t_load);
  if (!w) {
    w.emplace(capture_writer::create(partial, h));
  }
  KVCAL_CHECK(p.write_threads >= 0, "--write-threads must be >= 0 (0 = automatic)");
  if (p.write_threads > 0) w->set_write_threads(p.write_threads);
  res.write_threads = w->write_threads();

  // Host buffers: two sets of batch x seq_len rows.
  const bool cuda = device.is_cuda();
  const at::ScalarType store_type = store == "float16" ? at::kHalf : at::kFloat;
  const std::int64_t cap_rows = p.batch * p.seq_len;
  batch_buffers sets[2];
  for (auto& b : sets) {
    b.ids.resize(static_cast<std::size_t>(cap_rows));
    b.seq.resize(static_cast<std::size_t>(cap_rows));
    b.pos.resize(static_cast<std::size_t>(cap_rows));
    for (int l : layers)
      for (capture_item it : record)
        for (const auto& name : capture_item_datasets(it)) {
          std::vector<std::int64_t> shape = {cap_rows};
          for (auto v : h.inner_shape(name)) shape.push_back(v);
          auto opt = at::TensorOptions()
                         .dtype(it == capture_item::attn ? at::kFloat : store_type)
                         .pinned_memory(cuda);
          b.data[capture_layer_path(l, name)] = at::empty(shape, opt);
        }
  }

  capture_hook hook(h, store_type, cfg.sliding_window);
  std::map<std::int64_t, std::unique_ptr<full_cache>> caches;  // by batch size
  std::optional<progress> bar;
  if (p.show_progress) bar.emplace("capture", static_cast<std::uint64_t>(total_tokens), "tok");
  std::int64_t done_tokens = 0;
  for (std::int64_t i = 0; i < first_seq; ++i) done_tokens += seqs[static_cast<std::size_t>(i)].len;
  if (bar) bar->advance(static_cast<std::uint64_t>(done_tokens));

  res.resumed_from_sequence = first_seq;
  const auto t_loop = std::chrono::steady_clock::now();
  const std::int64_t bytes_before = w->file_bytes();
  {
    writer_thread wt(*w, p.maybe_on_commit, p.maybe_before_commit);
    int set = 0;
    std::size_t i = static_cast<std::size_t>(first_seq);
    bool stopped = false;
    while (i < seqs.size()) {
      if (p.stop_after_sequences > 0 && static_cast<std::int64_t>(i) >= p.stop_after_sequences) {
        stopped = true;
        break;
      }
      // Up to `batch` consecutive sequences of the same length.
      const std::int64_t T = seqs[i].len;
      std::size_t j = i;
      while (j < seqs.size() && static_cast<std::int64_t>(j - i) < p.batch && seqs[j].len == T &&
             (p.stop_after_sequences <= 0 || static_cast<std::int64_t>(j) < p.stop_after_sequences))
        ++j;
      const std::int64_t B = static_cast<std::int64_t>(j - i);
      batch_buffers& b = sets[set];
      set ^= 1;
      at::Tensor ids = at::empty({B, T}, at::kLong);
      auto acc = ids.accessor<std::int64_t, 2>();
      for (std::int64_t r = 0; r < B; ++r) {
        const sequence& s = seqs[i + static_cast<std::size_t>(r)];
        for (std::int64_t t = 0; t < T; ++t) {
          const auto row = static_cast<std::size_t>(r * T + t);
          b.ids[row] = stream[static_cast<std::size_t>(s.begin + t)];
          b.seq[row] = static_cast<std::int32_t>(i) + static_cast<std::int32_t>(r);
          b.pos[row] = static_cast<std::int32_t>(t);
          acc[r][t] = b.ids[row];
        }
      }
      b.rows = B * T;
      b.sequences = B;
      auto& cache = caches[B];
      if (!cache) cache = std::make_unique<full_cache>(cfg, B, device, compute, p.seq_len);
      cache->reset();
      hook.begin(&b);
      forward_options fo;
      fo.logits = logits_mode::none;
      fo.maybe_hook = &hook;
      model.forward(ids.to(device), *cache, fo);
      // The host copy of the flag waits for every queued copy of this batch.
      KVCAL_CHECK(!hook.overflow().to(at::kCPU).item<bool>(),
                  "activations exceed the float16 range in sequences ", i, "..", j - 1,
                  ": capture with --store float32");
      wt.submit(&b);
      if (bar) {
        bar->set_note(progress::format_count(static_cast<double>(wt.bytes()) / 1e6) +
                      " MB written");
        bar->advance(static_cast<std::uint64_t>(B * T));
      }
      res.loop_tokens += B * T;
      i = j;
    }
    wt.drain();
    res.complete = !stopped;
    res.writer_wait_seconds = wt.wait_seconds();
  }
  res.loop_seconds = seconds_since(t_loop);
  res.loop_file_bytes = w->file_bytes() - bytes_before;
  const auto t_finish = std::chrono::steady_clock::now();
  if (bar) bar->finish();
  if (res.complete) w->finish();
  res.tokens = w->header().n_tokens;
  res.sequences = w->header().n_sequences;
  res.file_bytes = w->file_bytes();
  w.reset();                       // closes the file
  if (res.complete) out.commit();  // fsync + rename: the page cache reaches the disk here
  res.finish_seconds = seconds_since(t_finish);
  res.seconds = seconds_since(t0);
  return res;
}

}  // namespace kvcal
