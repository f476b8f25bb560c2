// Pre-tokenizers of a tokenizer.json: they cut normalized text into the words BPE runs on.
// Supported: ByteLevel (add_prefix_space, use_regex = the GPT-2 pattern), Split (the GPT-2,
// Llama-3 and Qwen2 regexes, recognised verbatim, or a string pattern; every split behavior;
// invert), Metaspace (replacement, prepend_scheme first / always / never, split) and Sequence.
// Anything else is refused when loading, naming the type (or the regex), its path and the file.
//
//   kvcal::pre_tokenizer p = kvcal::pre_tokenizer::from_json(j["pre_tokenizer"], ctx);
//   std::vector<std::string> words = p.apply(segment, /*at_start=*/true);
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "model/pretokenize_regex.h"
#include "model/tokenizer_json.h"

namespace kvcal {

class pre_tokenizer {
 public:
  // `j` may be null (the whole segment is one word).
  static pre_tokenizer from_json(const tokjson::json& j, const tokjson::context& ctx);
  // `text` is one normalized segment between added tokens (valid UTF-8); `at_start` is true when it
  // begins the input (Metaspace's prepend_scheme "first"). Empty words are dropped.
  std::vector<std::string> apply(const std::string& text, bool at_start) const;

 private:
  enum class kind { byte_level, split, metaspace };
  enum class behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };
  enum class prepend { always, first, never };
  struct step {
    kind k = kind::split;
    bool add_prefix_space = false;  // byte_level
    bool use_regex = true;          // byte_level
    std::optional<split_pattern> regex;  // split: a known regex, else `literal`
    std::string literal;                 // split: string pattern; metaspace: the replacement
    behavior how = behavior::isolated;
    bool invert = false;
    prepend scheme = prepend::always;  // metaspace
    bool split = true;                 // metaspace
  };
  void parse(const tokjson::json& j, const tokjson::context& ctx);
  std::vector<step> steps_;
};

}  // namespace kvcal
