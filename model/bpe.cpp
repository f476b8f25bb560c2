// BPE merge loop (tokenizers' Word::merge_all) with a per-word cache.
#include "model/bpe.h"

#include <cstdio>
#include <queue>

#include "kernels/common/error.h"

namespace kvcal {
namespace {

// Words longer than this are not cached (one-word inputs such as a SentencePiece-style document
// would only fill the cache); past this many entries the cache starts over.
constexpr std::size_t max_cached_word_bytes = 256;
constexpr std::size_t max_cache_entries = 1 << 17;

std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
}

std::size_t utf8_char_len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;  // input is validated upstream; a stray byte stays one symbol
}

struct symbol {
  std::int32_t id;
  std::int32_t prev, next;  // -1: none
  bool alive;
};

struct candidate {
  std::int32_t rank, pos, new_id;
  // Lowest rank first, then leftmost.
  bool operator<(const candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

}  // namespace

bpe_model::bpe_model(std::unordered_map<std::string, std::int32_t> vocab,
                     const std::vector<std::pair<std::string, std::string>>& merges, bpe_options opts,
                     const std::string& source)
    : vocab_(std::move(vocab)), opts_(std::move(opts)), source_(source) {
  std::int32_t max_id = -1;
  for (const auto& [tok, id] : vocab_) {
    KVCAL_CHECK(id >= 0, source_, ": model.vocab: token '", tok, "' has negative id ", id);
    max_id = std::max(max_id, id);
  }
  id_to_token_.resize(static_cast<std::size_t>(max_id + 1));
  has_id_.assign(static_cast<std::size_t>(max_id + 1), false);
  for (const auto& [tok, id] : vocab_) {
    KVCAL_CHECK(!has_id_[static_cast<std::size_t>(id)], source_, ": model.vocab: id ", id,
                " is used by both '", id_to_token_[static_cast<std::size_t>(id)], "' and '", tok, "'");
    id_to_token_[static_cast<std::size_t>(id)] = tok;
    has_id_[static_cast<std::size_t>(id)] = true;
  }
  const std::size_t prefix_len = opts_.continuing_subword_prefix.size();
  for (std::size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto ia = vocab_.find(a), ib = vocab_.find(b);
    KVCAL_CHECK(ia != vocab_.end(), source_, ": model.merges[", rank, "]: token '", a, "' is not in the vocabulary");
    KVCAL_CHECK(ib != vocab_.end(), source_, ": model.merges[", rank, "]: token '", b, "' is not in the vocabulary");
    const std::string merged = a + (b.size() >= prefix_len ? b.substr(prefix_len) : b);
    auto im = vocab_.find(merged);
    KVCAL_CHECK(im != vocab_.end(), source_, ": model.merges[", rank, "]: merged token '", merged,
                "' is not in the vocabulary");
    // A repeated pair keeps its last rank, as tokenizers' HashMap collection does.
    merges_[pair_key(ia->second, ib->second)] = {static_cast<std::int32_t>(rank), im->second};
  }
  if (opts_.unk_token) {
    KVCAL_CHECK(vocab_.count(*opts_.unk_token), source_, ": model.unk_token '", *opts_.unk_token,
                "' is not in the vocabulary");
  }
}

std::optional<std::int32_t> bpe_model::token_to_id(const std::string& token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* bpe_model::id_to_token(std::int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= id_to_token_.size() || !has_id_[static_cast<std::size_t>(id)])
    return nullptr;
  return &id_to_token_[static_cast<std::size_t>(id)];
}

void bpe_model::tokenize(std::string_view word, std::vector<std::int32_t>& out) const {
  if (word.empty()) return;
  if (opts_.ignore_merges) {
    auto it = vocab_.find(std::string(word));
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= max_cached_word_bytes;
  std::string key;
  if (cacheable) {
    key.assign(word);
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<std::int32_t> ids = merge_word(word);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= max_cache_entries) cache_.clear();
    cache_.emplace(std::move(key), std::move(ids));
  }
}

std::vector<std::int32_t> bpe_model::merge_word(std::string_view word) const {
  std::vector<symbol> syms;
  syms.reserve(word.size());
  auto add = [&](std::int32_t id) {
    const auto n = static_cast<std::int32_t>(syms.size());
    syms.push_back({id, n - 1, -1, true});
    if (n > 0) syms[static_cast<std::size_t>(n - 1)].next = n;
  };
  std::int32_t pending_unk = -1;  // an unk not yet added (-1: none), so that fuse_unk can extend it
  std::string piece;
  for (std::size_t i = 0; i < word.size();) {
    const std::size_t len = std::min(utf8_char_len(static_cast<unsigned char>(word[i])), word.size() - i);
    const bool first = i == 0, last = i + len == word.size();
    piece.assign(word.substr(i, len));
    if (!first && !opts_.continuing_subword_prefix.empty()) piece = opts_.continuing_subword_prefix + piece;
    if (last && !opts_.end_of_word_suffix.empty()) piece += opts_.end_of_word_suffix;
    i += len;
    auto it = vocab_.find(piece);
    if (it != vocab_.end()) {
      if (pending_unk >= 0) add(pending_unk), pending_unk = -1;
      add(it->second);
      continue;
    }
    if (opts_.byte_fallback) {
      std::vector<std::int32_t> bytes;
      for (unsigned char b : piece) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        auto ib = vocab_.find(name);
        if (ib == vocab_.end()) break;
        bytes.push_back(ib->second);
      }
      if (bytes.size() == piece.size()) {
        // tokenizers does not flush a pending unk here either; the order of ids follows it.
        for (std::int32_t b : bytes) add(b);
        continue;
      }
    }
    KVCAL_CHECK(opts_.unk_token, source_, ": the character '", piece,
                "' is not in the vocabulary and the BPE model has neither byte_fallback nor unk_token");
    const std::int32_t unk = vocab_.at(*opts_.unk_token);
    if (pending_unk >= 0 && !opts_.fuse_unk) add(pending_unk);
    pending_unk = unk;
  }
  if (pending_unk >= 0) add(pending_unk);

  std::priority_queue<candidate> queue;
  auto push_pair = [&](std::int32_t pos) {
    const symbol& s = syms[static_cast<std::size_t>(pos)];
    if (s.next < 0) return;
    auto it = merges_.find(pair_key(s.id, syms[static_cast<std::size_t>(s.next)].id));
    if (it != merges_.end()) queue.push({it->second.first, pos, it->second.second});
  };
  for (std::int32_t i = 0; i + 1 < static_cast<std::int32_t>(syms.size()); ++i) push_pair(i);
  while (!queue.empty()) {
    const candidate top = queue.top();
    queue.pop();
    symbol& left = syms[static_cast<std::size_t>(top.pos)];
    if (!left.alive || left.next < 0) continue;
    symbol& right = syms[static_cast<std::size_t>(left.next)];
    // Stale entry: one side was merged into something else since it was queued.
    auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end() || it->second.second != top.new_id) continue;
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) syms[static_cast<std::size_t>(right.next)].prev = top.pos;
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(top.pos);
  }
  std::vector<std::int32_t> ids;
  for (std::int32_t i = syms.empty() ? -1 : 0; i >= 0; i = syms[static_cast<std::size_t>(i)].next)
    ids.push_back(syms[static_cast<std::size_t>(i)].id);
  return ids;
}

}  // namespace kvcal
