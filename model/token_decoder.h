// Decoders of a tokenizer.json: turn the token strings of a sequence of ids back into text.
// Supported: ByteLevel, Replace (string pattern), ByteFallback, Fuse, Strip, Metaspace, Sequence;
// anything else is refused when loading, naming the type, its path and the file. Each step maps
// the list of token strings to a new list (tokenizers' decode_chain); the results are concatenated.
//
//   kvcal::token_decoder d = kvcal::token_decoder::from_json(j["decoder"], ctx);
//   std::string text = d.decode({"▁Hello", "▁world"});
#pragma once

#include <string>
#include <vector>

#include "model/tokenizer_json.h"

namespace kvcal {

class token_decoder {
 public:
  // `j` may be null: tokens are then joined with single spaces, as tokenizers does.
  static token_decoder from_json(const tokjson::json& j, const tokjson::context& ctx);
  std::string decode(std::vector<std::string> tokens) const;

 private:
  enum class kind { byte_level, replace, byte_fallback, fuse, strip, metaspace };
  struct step {
    kind k = kind::fuse;
    std::string a, b;  // replace: a -> b; strip: a = the character; metaspace: a = replacement
    std::size_t start = 0, stop = 0;  // strip
    bool prepend = true;              // metaspace: prepend_scheme != never
  };
  static step make_step(kind k) {
    step s;
    s.k = k;
    return s;
  }
  void parse(const tokjson::json& j, const tokjson::context& ctx);
  bool present_ = false;
  std::vector<step> steps_;
};

}  // namespace kvcal
