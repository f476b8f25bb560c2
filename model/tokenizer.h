// Tokenizer of a Hugging Face checkpoint, read from its tokenizer.json (plain C++17, no libtorch).
//
// Supported (what GPT-2, Llama-2/3, Mistral and Qwen2 ship):
//   model           BPE: vocab, merges ("a b" or ["a", "b"]), byte_fallback, unk_token / fuse_unk,
//                   ignore_merges, continuing_subword_prefix / end_of_word_suffix
//   normalizer      NFC, Prepend, Replace (string), Sequence
//   pre_tokenizer   ByteLevel, Split (the GPT-2 / Llama-3 / Qwen2 regexes, string patterns),
//                   Metaspace, Sequence
//   post_processor  TemplateProcessing (single template), ByteLevel, Sequence
//   decoder         ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence
//   added_tokens    split out first (leftmost, longest); special, lstrip, rstrip, single_word,
//                   normalized
// Anything else is refused at load time with an error naming the file and the field. Encoding
// follows tokenizers: added tokens -> normalizer -> pre-tokenizer -> BPE -> post-processor.
// Input text must be valid UTF-8 (otherwise kvcal::error with the byte offset); decoding replaces
// invalid byte sequences with U+FFFD as tokenizers does.
//
//   kvcal::tokenizer tok = kvcal::tokenizer::load("/models/llama3");   // dir or tokenizer.json
//   std::vector<int32_t> ids = tok.encode("Hello world", /*add_special_tokens=*/true);
//   std::string text = tok.decode(ids, /*skip_special_tokens=*/true);
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kvcal {

class tokenizer {
 public:
  // `path` is a tokenizer.json or a directory holding one. A tokenizer_config.json beside it, when
  // present, supplies bos_token / eos_token.
  static tokenizer load(const std::string& path);
  // From the text of a tokenizer.json; `source` names it in error messages.
  static tokenizer from_json(const std::string& json_text, const std::string& source = "tokenizer.json");

  // add_special_tokens: apply the post-processor (e.g. prepend BOS), as transformers' default.
  std::vector<std::int32_t> encode(std::string_view text, bool add_special_tokens) const;
  // Throws on ids outside the vocabulary. skip_special_tokens drops added tokens marked special.
  std::string decode(const std::vector<std::int32_t>& ids, bool skip_special_tokens) const;

  std::optional<std::int32_t> token_to_id(const std::string& token) const;
  std::optional<std::string> id_to_token(std::int32_t id) const;
  bool is_special(std::int32_t id) const;
  // One past the largest id of the model vocabulary and the added tokens.
  std::int32_t vocab_size() const;
  // From tokenizer_config.json when present, else BOS from the post-processor's template.
  std::optional<std::int32_t> bos_id() const;
  std::optional<std::int32_t> eos_id() const;
  // The ids add_special_tokens puts before / after the text.
  const std::vector<std::int32_t>& special_prefix() const;
  const std::vector<std::int32_t>& special_suffix() const;
  // SHA-256 (hex) of the tokenizer.json bytes, for fingerprints.
  const std::string& sha256() const;
  const std::string& source() const;

 private:
  struct impl;
  static std::shared_ptr<impl> parse(const std::string& json_text, const std::string& source);
  explicit tokenizer(std::shared_ptr<const impl> p) : p_(std::move(p)) {}
  std::shared_ptr<const impl> p_;
};

}  // namespace kvcal
