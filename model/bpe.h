// Byte-pair-encoding model of a Hugging Face tokenizer.json ("model": {"type": "BPE", ...}).
//
// Tokenizes one pre-token ("word") exactly as tokenizers' BPE::merge_word does: one symbol per
// character (byte_fallback turns an unknown character into its <0xNN> byte tokens, otherwise the
// unk token, fused when fuse_unk), then repeatedly applies the lowest-ranked merge, leftmost first.
// Results are cached per word, so running text with repeated words costs one hash lookup a word.
//
//   kvcal::bpe_model m(vocab, merges, opts, "tokenizer.json");
//   std::vector<int32_t> ids; m.tokenize("hello", ids);
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace kvcal {

struct bpe_options {
  std::optional<std::string> unk_token;
  std::string continuing_subword_prefix;  // empty: none
  std::string end_of_word_suffix;         // empty: none
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;  // a word found whole in the vocabulary is one token (Llama-3)
};

class bpe_model {
 public:
  // `source` names the file in error messages (merges naming unknown tokens, unk not in vocab).
  bpe_model(std::unordered_map<std::string, std::int32_t> vocab,
            const std::vector<std::pair<std::string, std::string>>& merges, bpe_options opts,
            const std::string& source);

  // Appends the ids of `word` to `out`. Throws when a character has no token and there is neither
  // byte fallback nor an unk token.
  void tokenize(std::string_view word, std::vector<std::int32_t>& out) const;

  std::optional<std::int32_t> token_to_id(const std::string& token) const;
  const std::string* id_to_token(std::int32_t id) const;  // nullptr when not in the vocabulary
  std::int32_t size() const { return static_cast<std::int32_t>(id_to_token_.size()); }

 private:
  std::vector<std::int32_t> merge_word(std::string_view word) const;

  std::unordered_map<std::string, std::int32_t> vocab_;
  std::vector<std::string> id_to_token_;  // [max id + 1]; gaps are empty and absent from vocab_
  std::vector<bool> has_id_;
  // (left id << 32 | right id) -> (rank, merged id)
  std::unordered_map<std::uint64_t, std::pair<std::int32_t, std::int32_t>> merges_;
  bpe_options opts_;
  std::string source_;

  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<std::int32_t>> cache_;
};

}  // namespace kvcal
