#include "train/train_data.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "kernels/common/error.h"

namespace kvcal {

namespace {

std::string fingerprint_text(const std::string& json) {
  try {
    return nlohmann::json::parse(json).dump();
  } catch (const nlohmann::json::exception&) {
    return json;
  }
}

bool same_model(const std::string& a, const std::string& b) {
  try {
    return nlohmann::json::parse(a) == nlohmann::json::parse(b);
  } catch (const nlohmann::json::exception&) {
    return a == b;
  }
}

// Fisher-Yates with a portable draw (std::shuffle's distribution is implementation-defined).
template <typename T>
void seeded_shuffle(std::vector<T>& v, std::mt19937_64& rng) {
  for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng() % i]);
}

}  // namespace

std::uint64_t epoch_seed(std::uint64_t seed, std::int64_t epoch) {
  std::uint64_t z = seed * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(epoch) + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

capture_set::capture_set(const std::vector<std::string>& paths) {
  KVCAL_CHECK(!paths.empty(), "no --capture file");
  for (const auto& p : paths) readers_.push_back(std::make_unique<capture_reader>(p));
  const capture_header& h0 = readers_[0]->header();
  for (std::size_t i = 0; i < readers_.size(); ++i) {
    const capture_reader& r = *readers_[i];
    const capture_header& h = r.header();
    KVCAL_CHECK(r.n_tokens() > 0, r.path(), ": the capture is empty (0 tokens)");
    KVCAL_CHECK(same_model(h.model_json, h0.model_json) && h.n_layers == h0.n_layers &&
                    h.n_kv_heads == h0.n_kv_heads && h.head_dim == h0.head_dim &&
                    h.n_heads == h0.n_heads && h.hidden_size == h0.hidden_size,
                "captures of different models:\n  ", readers_[0]->path(), ": ",
                fingerprint_text(h0.model_json), "\n  ", r.path(), ": ",
                fingerprint_text(h.model_json));
    KVCAL_CHECK(h.layers == h0.layers, "captures recorded different layers: ", readers_[0]->path(),
                " and ", r.path());
    // Sequences from /tokens/seq (contiguous runs).
    const std::vector<std::int32_t> seq = r.read_tokens("seq", 0, r.n_tokens());
    std::int64_t start = 0;
    for (std::int64_t t = 1; t <= r.n_tokens(); ++t) {
      if (t < r.n_tokens() && seq[t] == seq[start]) continue;
      seqs_.push_back({static_cast<int>(i), start, t - start, seq[start]});
      start = t;
    }
    n_tokens_ += r.n_tokens();
  }
}

std::int64_t capture_set::sliding_window() const {
  for (const auto& r : readers_)  // same model: any record holds for all
    if (r->header().sliding_window >= 0) return r->header().sliding_window;
  // Only Mistral configs give a window (runtime/model_config.cpp).
  try {
    return nlohmann::json::parse(model_json()).value("model_type", "") == "mistral" ? -1 : 0;
  } catch (const nlohmann::json::exception&) {
    return -1;
  }
}

void capture_set::require(capture_item item, const std::string& why) const {
  for (const auto& r : readers_)
    KVCAL_CHECK(r->header().records(item), r->path(), ": the capture has no '",
                capture_item_name(item), "' (record it with kvcal capture --record ...,",
                capture_item_name(item), "): ", why);
}

sequence_split capture_set::split(double val_fraction, std::int64_t val_max_tokens,
                                  std::uint64_t seed) const {
  KVCAL_CHECK(val_fraction > 0 && val_fraction < 1, "validation fraction ", val_fraction,
              " must be in (0, 1)");
  KVCAL_CHECK(seqs_.size() >= 2, readers_[0]->path(), ": ", seqs_.size(),
              " sequence(s): at least 2 are needed (one held out for validation)");
  std::vector<std::size_t> order(seqs_.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::mt19937_64 rng(epoch_seed(seed, -1));
  seeded_shuffle(order, rng);
  std::size_t n_val = static_cast<std::size_t>(std::ceil(val_fraction * seqs_.size()));
  n_val = std::clamp<std::size_t>(n_val, 1, seqs_.size() - 1);
  sequence_split s;
  std::vector<bool> is_val(seqs_.size(), false);
  for (std::size_t i = 0; i < n_val; ++i) {
    const seq_ref& q = seqs_[order[i]];
    if (i > 0 && s.val_tokens + q.len > val_max_tokens) break;
    is_val[order[i]] = true;
    s.val_tokens += q.len;
  }
  for (std::size_t i = 0; i < seqs_.size(); ++i) {
    (is_val[i] ? s.val : s.train).push_back(seqs_[i]);
    if (!is_val[i]) s.train_tokens += seqs_[i].len;
  }
  return s;
}

at::Tensor capture_set::read(const seq_ref& s, int layer, const std::string& name) const {
  const capture_reader& r = *readers_[s.file];
  KVCAL_CHECK(r.has(layer, name), r.path(), ": no dataset ", name, " in layer ", layer);
  std::vector<std::int64_t> shape = {s.len};
  for (auto v : r.inner_shape(layer, name)) shape.push_back(v);
  at::Tensor t = at::empty(shape, at::kFloat);
  float* p = t.data_ptr<float>();
  r.read_rows(layer, name, s.row0, s.len, p);
  const std::int64_t n = t.numel(), per_row = n / std::max<std::int64_t>(s.len, 1);
  for (std::int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i]))
      KVCAL_FAIL(r.path(), ": ", std::isnan(p[i]) ? "NaN" : "Inf", " in ", name, " of layer ",
                 layer, " at token row ", s.row0 + i / per_row, " (sequence ", s.index, ")");
  return t;
}

at::Tensor capture_set::positions(const seq_ref& s) const {
  const std::vector<std::int32_t> pos = readers_[s.file]->read_tokens("pos", s.row0, s.len);
  at::Tensor t = at::empty({s.len}, at::kLong);
  for (std::int64_t i = 0; i < s.len; ++i) t.data_ptr<std::int64_t>()[i] = pos[i];
  return t;
}

row_shuffler::row_shuffler(std::vector<seq_ref> seqs, row_loader load, std::int64_t buffer_rows,
                           std::int64_t batch, std::uint64_t seed)
    : seqs_(std::move(seqs)),
      load_(std::move(load)),
      buffer_rows_(std::max<std::int64_t>(buffer_rows, batch)),
      batch_(batch),
      rng_(seed) {
  KVCAL_CHECK(batch_ > 0, "batch size must be positive");
  seeded_shuffle(seqs_, rng_);
  std::int64_t rows = 0;
  for (const auto& s : seqs_) rows += s.len;
  n_batches_ = (rows + batch_ - 1) / batch_;
}

bool row_shuffler::next(at::Tensor& out) {
  const std::int64_t have = buf_.defined() ? buf_.size(0) - buf_pos_ : 0;
  if (have < batch_ && next_seq_ < seqs_.size()) {
    std::vector<at::Tensor> parts;
    std::int64_t rows = have;
    if (have > 0) parts.push_back(buf_.narrow(0, buf_pos_, have));
    while (rows < buffer_rows_ && next_seq_ < seqs_.size()) {
      parts.push_back(load_(seqs_[next_seq_++]));
      rows += parts.back().size(0);
    }
    at::Tensor all = at::cat(parts, 0);
    std::vector<std::int64_t> perm(static_cast<std::size_t>(all.size(0)));
    for (std::size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<std::int64_t>(i);
    seeded_shuffle(perm, rng_);
    buf_ = all.index_select(0, at::tensor(perm, at::kLong));
    buf_pos_ = 0;
  }
  const std::int64_t left = buf_.defined() ? buf_.size(0) - buf_pos_ : 0;
  if (left == 0) return false;
  const std::int64_t n = std::min(batch_, left);
  out = buf_.narrow(0, buf_pos_, n);
  buf_pos_ += n;
  return true;
}

row_loader cached_loader(row_loader load, std::int64_t budget_bytes) {
  if (budget_bytes <= 0) return load;
  struct state {
    std::map<std::pair<int, std::int64_t>, at::Tensor> rows;
    std::int64_t used = 0;
  };
  auto st = std::make_shared<state>();
  return [st, load = std::move(load), budget_bytes](const seq_ref& s) {
    const auto key = std::make_pair(s.file, s.row0);
    auto it = st->rows.find(key);
    if (it != st->rows.end()) return it->second;
    at::Tensor t = load(s);
    const std::int64_t bytes = t.numel() * static_cast<std::int64_t>(t.element_size());
    if (st->used + bytes <= budget_bytes) {
      st->rows.emplace(key, t);
      st->used += bytes;
    }
    return t;
  };
}

std::vector<std::vector<seq_ref>> sequence_batches(std::vector<seq_ref> seqs, std::int64_t batch,
                                                   std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  seeded_shuffle(seqs, rng);
  std::vector<std::vector<seq_ref>> out;
  std::int64_t tokens = 0;
  for (const auto& s : seqs) {
    if (out.empty() || tokens + s.len > batch) {
      out.emplace_back();
      tokens = 0;
    }
    out.back().push_back(s);
    tokens += s.len;
  }
  return out;
}

}  // namespace kvcal
