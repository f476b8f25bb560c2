// The added tokens of a tokenizer.json (special tokens such as <|begin_of_text|>, <s>): text is cut
// at them before normalization and BPE, leftmost match first and, at one position, the longest.
// Tokens with "normalized": false are matched in the raw text, the others in the normalized text
// (against their own normalized content), as in tokenizers. lstrip / rstrip swallow the whitespace
// beside a match; single_word requires no letter, digit or '_' on either side (tokenizers uses
// char::is_alphanumeric, kvcal \p{L} / \p{N}, which differ only on rare marks).
//
//   kvcal::added_vocabulary av(tokens);
//   for (const auto& seg : av.split(text, /*normalized_tokens=*/false)) ...
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvcal {

struct added_token {
  std::int32_t id = -1;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

class added_vocabulary {
 public:
  struct segment {
    std::size_t begin, end;  // byte range in the text that was split
    std::int32_t id;         // -1: ordinary text
  };

  added_vocabulary() = default;
  // `match_text` is what is searched for each token: its content, or its normalized content.
  added_vocabulary(std::vector<added_token> tokens, std::vector<std::string> match_text);

  // Cuts `text` at the tokens of one kind (normalized or not). Segments cover the text in order,
  // except whitespace swallowed by lstrip / rstrip.
  std::vector<segment> split(std::string_view text, bool normalized_tokens) const;

  const std::vector<added_token>& tokens() const { return tokens_; }

 private:
  std::vector<added_token> tokens_;
  std::vector<std::string> match_;
  std::array<std::vector<std::size_t>, 256> by_first_byte_;  // token indices, longest match text first
};

}  // namespace kvcal
