// tokenizer.json loading and the encode / decode pipelines (see tokenizer.h).
#include "model/tokenizer.h"

#include <fstream>
#include <sstream>
#include <sys/stat.h>
#include <unordered_map>

#include "kernels/common/error.h"
#include "model/added_tokens.h"
#include "model/bpe.h"
#include "model/normalizer.h"
#include "model/pre_tokenizer.h"
#include "model/token_decoder.h"
#include "model/tokenizer_json.h"
#include "model/unicode.h"
#include "runtime/io/sha256.h"

namespace kvcal {

using tokjson::context;
using tokjson::json;

struct tokenizer::impl {
  std::string source;
  std::string sha256;
  std::unique_ptr<bpe_model> model;
  normalizer norm;
  pre_tokenizer pre;
  token_decoder dec;
  added_vocabulary added;
  bool has_normalized_added = false;
  std::unordered_map<std::int32_t, std::size_t> added_by_id;  // id -> index in added.tokens()
  std::unordered_map<std::string, std::int32_t> added_by_content;
  std::vector<std::int32_t> prefix, suffix;  // post-processor
  std::optional<std::int32_t> template_bos;
  std::optional<std::int32_t> bos, eos;
  std::int32_t vocab_size = 0;
};

namespace {

bool is_directory(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string read_file(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  KVCAL_CHECK(f.good(), path, ": cannot open ", what);
  std::ostringstream os;
  os << f.rdbuf();
  KVCAL_CHECK(!f.bad(), path, ": error reading ", what);
  return os.str();
}

json parse_json(const std::string& text, const std::string& source) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    KVCAL_FAIL(source, ": invalid JSON: ", e.what());
  }
}

std::unique_ptr<bpe_model> parse_model(const json& m, const context& ctx) {
  // Files from old tokenizers versions may omit "type"; a BPE model is recognisable by its merges.
  const std::string type = tokjson::has(m, "type") ? tokjson::get_string(m, "type", ctx)
                           : tokjson::has(m, "merges") ? "BPE" : "";
  KVCAL_CHECK(type == "BPE", ctx.file, ": unsupported model type '", type, "' at 'model.type' (supported: BPE)");
  KVCAL_CHECK(!tokjson::has(m, "dropout") || m.at("dropout").is_null(), ctx.file,
              ": 'model.dropout' is set; BPE dropout is a training-time option and is not supported");

  const json& v = tokjson::field(m, "vocab", ctx);
  KVCAL_CHECK(v.is_object(), ctx.file, ": 'model.vocab' must be an object of token -> id");
  std::unordered_map<std::string, std::int32_t> vocab;
  vocab.reserve(v.size());
  for (auto it = v.begin(); it != v.end(); ++it) {
    KVCAL_CHECK(it.value().is_number_integer(), ctx.file, ": 'model.vocab' entry '", it.key(),
                "' must be an integer id");
    const long long id = it.value().get<long long>();
    KVCAL_CHECK(id >= 0 && id <= INT32_MAX, ctx.file, ": 'model.vocab' entry '", it.key(), "' has id ", id,
                " outside [0, 2^31)");
    vocab.emplace(it.key(), static_cast<std::int32_t>(id));
  }

  std::vector<std::pair<std::string, std::string>> merges;
  if (tokjson::has(m, "merges")) {
    const json& ms = m.at("merges");
    KVCAL_CHECK(ms.is_array(), ctx.file, ": 'model.merges' must be an array");
    merges.reserve(ms.size());
    for (std::size_t i = 0; i < ms.size(); ++i) {
      const json& e = ms[i];
      if (e.is_string()) {  // "a b"
        const std::string s = e.get<std::string>();
        const std::size_t sp = s.find(' ');
        KVCAL_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos, ctx.file,
                    ": 'model.merges[", i, "]' = \"", s, "\" must be two tokens separated by one space");
        merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else {  // ["a", "b"]
        KVCAL_CHECK(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string(), ctx.file,
                    ": 'model.merges[", i, "]' must be \"a b\" or [\"a\", \"b\"]");
        merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
      }
    }
  }

  bpe_options o;
  if (tokjson::has(m, "unk_token")) o.unk_token = tokjson::get_string(m, "unk_token", ctx);
  if (tokjson::has(m, "continuing_subword_prefix"))
    o.continuing_subword_prefix = tokjson::get_string(m, "continuing_subword_prefix", ctx);
  if (tokjson::has(m, "end_of_word_suffix")) o.end_of_word_suffix = tokjson::get_string(m, "end_of_word_suffix", ctx);
  o.fuse_unk = tokjson::get_bool(m, "fuse_unk", false, ctx);
  o.byte_fallback = tokjson::get_bool(m, "byte_fallback", false, ctx);
  o.ignore_merges = tokjson::get_bool(m, "ignore_merges", false, ctx);
  return std::make_unique<bpe_model>(std::move(vocab), merges, std::move(o), ctx.file);
}

// Collects the ids a post-processor puts around the sequence into prefix / suffix.
void parse_post_processor(const json& j, const context& ctx, std::vector<std::int32_t>& prefix,
                          std::vector<std::int32_t>& suffix) {
  if (j.is_null()) return;
  const std::string type = tokjson::get_type(j, "post-processor", ctx);
  if (type == "ByteLevel") return;  // only adjusts offsets
  if (type == "Sequence") {
    const json& list = tokjson::field(j, "processors", ctx);
    KVCAL_CHECK(list.is_array(), ctx.file, ": '", ctx.at("processors").path, "' must be an array");
    for (std::size_t i = 0; i < list.size(); ++i) {
      std::vector<std::int32_t> p, s;
      parse_post_processor(list[i], ctx.at("processors").at(i), p, s);
      prefix.insert(prefix.begin(), p.begin(), p.end());  // a later processor wraps the earlier result
      suffix.insert(suffix.end(), s.begin(), s.end());
    }
    return;
  }
  KVCAL_CHECK(type == "TemplateProcessing", ctx.file, ": unsupported post-processor type '", type, "' at '",
              ctx.path, "' (supported: TemplateProcessing, ByteLevel, Sequence)");
  const json& single = tokjson::field(j, "single", ctx);
  const context sc = ctx.at("single");
  KVCAL_CHECK(single.is_array(), ctx.file, ": '", sc.path, "' must be an array");
  const json& specials = tokjson::field(j, "special_tokens", ctx);
  bool seen_sequence = false;
  for (std::size_t i = 0; i < single.size(); ++i) {
    const json& item = single[i];
    const context ic = sc.at(i);
    if (tokjson::has(item, "Sequence")) {
      const std::string id = tokjson::get_string(item.at("Sequence"), "id", ic.at("Sequence"));
      KVCAL_CHECK(id == "A" && !seen_sequence, ctx.file, ": '", ic.path,
                  "': the single-sequence template must contain sequence A exactly once");
      seen_sequence = true;
    } else if (tokjson::has(item, "SpecialToken")) {
      const std::string name = tokjson::get_string(item.at("SpecialToken"), "id", ic.at("SpecialToken"));
      KVCAL_CHECK(specials.is_object() && specials.contains(name), ctx.file, ": '", ic.path,
                  "' names special token '", name, "' which is not in '", ctx.at("special_tokens").path, "'");
      const json& ids = tokjson::field(specials.at(name), "ids", ctx.at("special_tokens").at(name));
      KVCAL_CHECK(ids.is_array(), ctx.file, ": '", ctx.at("special_tokens").at(name).path, ".ids' must be an array");
      for (const json& id : ids) {
        KVCAL_CHECK(id.is_number_integer(), ctx.file, ": '", ctx.at("special_tokens").at(name).path,
                    ".ids' must hold integers");
        (seen_sequence ? suffix : prefix).push_back(id.get<std::int32_t>());
      }
    } else {
      KVCAL_FAIL(ctx.file, ": '", ic.path, "' must be {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
  }
  KVCAL_CHECK(seen_sequence, ctx.file, ": '", sc.path, "' does not contain the sequence A");
}

// bos_token / eos_token of tokenizer_config.json: a string or {"content": ...}.
std::optional<std::string> config_token(const json& cfg, const char* key) {
  if (!tokjson::has(cfg, key)) return std::nullopt;
  const json& v = cfg.at(key);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v.at("content").is_string()) return v.at("content").get<std::string>();
  return std::nullopt;
}

}  // namespace

tokenizer tokenizer::from_json(const std::string& json_text, const std::string& source) {
  return tokenizer(parse(json_text, source));
}

std::shared_ptr<tokenizer::impl> tokenizer::parse(const std::string& json_text, const std::string& source) {
  auto p = std::make_shared<impl>();
  p->source = source;
  p->sha256 = sha256_hex(json_text);
  const json j = parse_json(json_text, source);
  KVCAL_CHECK(j.is_object(), source, ": the top level must be a JSON object");
  const context root{source, ""};

  p->model = parse_model(tokjson::field(j, "model", root), root.at("model"));
  p->norm = normalizer::from_json(j.value("normalizer", json()), root.at("normalizer"));
  p->pre = pre_tokenizer::from_json(j.value("pre_tokenizer", json()), root.at("pre_tokenizer"));
  p->dec = token_decoder::from_json(j.value("decoder", json()), root.at("decoder"));
  parse_post_processor(j.value("post_processor", json()), root.at("post_processor"), p->prefix, p->suffix);
  if (!p->prefix.empty()) p->template_bos = p->prefix.front();

  std::vector<added_token> added;
  std::vector<std::string> match;
  if (tokjson::has(j, "added_tokens")) {
    const json& list = j.at("added_tokens");
    const context lc = root.at("added_tokens");
    KVCAL_CHECK(list.is_array(), source, ": 'added_tokens' must be an array");
    for (std::size_t i = 0; i < list.size(); ++i) {
      const context c = lc.at(i);
      added_token t;
      const long long id = tokjson::get_int(list[i], "id", -1, c);
      KVCAL_CHECK(id >= 0 && id <= INT32_MAX, source, ": '", c.path, ".id' is missing or out of range");
      t.id = static_cast<std::int32_t>(id);
      t.content = tokjson::get_string(list[i], "content", c);
      KVCAL_CHECK(!t.content.empty(), source, ": '", c.path, ".content' is empty");
      t.special = tokjson::get_bool(list[i], "special", false, c);
      t.lstrip = tokjson::get_bool(list[i], "lstrip", false, c);
      t.rstrip = tokjson::get_bool(list[i], "rstrip", false, c);
      t.single_word = tokjson::get_bool(list[i], "single_word", false, c);
      t.normalized = tokjson::get_bool(list[i], "normalized", !t.special, c);
      p->has_normalized_added = p->has_normalized_added || t.normalized;
      match.push_back(t.normalized ? p->norm.apply(t.content) : t.content);
      p->added_by_id[t.id] = added.size();
      p->added_by_content[t.content] = t.id;
      added.push_back(std::move(t));
    }
  }
  p->added = added_vocabulary(std::move(added), std::move(match));

  p->vocab_size = p->model->size();
  for (const added_token& t : p->added.tokens()) p->vocab_size = std::max(p->vocab_size, t.id + 1);
  for (std::int32_t id : p->prefix)
    KVCAL_CHECK(id >= 0 && id < p->vocab_size, source, ": post_processor adds id ", id, " outside the vocabulary");
  for (std::int32_t id : p->suffix)
    KVCAL_CHECK(id >= 0 && id < p->vocab_size, source, ": post_processor adds id ", id, " outside the vocabulary");
  p->bos = p->template_bos;
  return p;
}

tokenizer tokenizer::load(const std::string& path) {
  const bool dir = is_directory(path);
  const std::string file = dir ? path + "/tokenizer.json" : path;
  std::shared_ptr<impl> p = parse(read_file(file, "tokenizer.json"), file);
  const tokenizer t(p);

  const std::size_t slash = file.find_last_of('/');
  const std::string cfg_path =
      (slash == std::string::npos ? std::string() : file.substr(0, slash + 1)) + "tokenizer_config.json";
  std::ifstream probe(cfg_path);
  if (probe.good()) {
    probe.close();
    const json cfg = parse_json(read_file(cfg_path, "tokenizer_config.json"), cfg_path);
    for (auto [key, slot] : {std::pair<const char*, std::optional<std::int32_t>*>{"bos_token", &p->bos},
                             {"eos_token", &p->eos}}) {
      if (auto name = config_token(cfg, key)) {
        auto id = t.token_to_id(*name);
        KVCAL_CHECK(id, cfg_path, ": '", key, "' = '", *name, "' is not a token of ", file);
        *slot = *id;
      }
    }
  }
  return t;
}

std::vector<std::int32_t> tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  if (!utf8_valid(text)) utf8_decode(text, "tokenizer input");  // throws with the byte offset
  const impl& p = *p_;
  std::vector<std::int32_t> ids;
  if (add_special_tokens) ids = p.prefix;
  for (const auto& seg : p.added.split(text, false)) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
      continue;
    }
    const std::string normalized = p.norm.apply(text.substr(seg.begin, seg.end - seg.begin));
    std::vector<added_vocabulary::segment> parts;
    if (p.has_normalized_added)
      parts = p.added.split(normalized, true);
    else
      parts.push_back({0, normalized.size(), -1});
    for (const auto& part : parts) {
      if (part.id >= 0) {
        ids.push_back(part.id);
        continue;
      }
      const bool at_start = seg.begin == 0 && part.begin == 0;
      for (const std::string& word : p.pre.apply(normalized.substr(part.begin, part.end - part.begin), at_start))
        p.model->tokenize(word, ids);
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), p.suffix.begin(), p.suffix.end());
  return ids;
}

std::string tokenizer::decode(const std::vector<std::int32_t>& ids, bool skip_special_tokens) const {
  const impl& p = *p_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (std::int32_t id : ids) {
    auto it = p.added_by_id.find(id);
    if (it != p.added_by_id.end()) {
      const added_token& t = p.added.tokens()[it->second];
      if (!(skip_special_tokens && t.special)) tokens.push_back(t.content);
      continue;
    }
    const std::string* s = p.model->id_to_token(id);
    KVCAL_CHECK(s, p.source, ": cannot decode token id ", id, ": not in the vocabulary (size ", p.vocab_size, ")");
    tokens.push_back(*s);
  }
  return p.dec.decode(std::move(tokens));
}

std::optional<std::int32_t> tokenizer::token_to_id(const std::string& token) const {
  auto it = p_->added_by_content.find(token);
  if (it != p_->added_by_content.end()) return it->second;
  return p_->model->token_to_id(token);
}

std::optional<std::string> tokenizer::id_to_token(std::int32_t id) const {
  auto it = p_->added_by_id.find(id);
  if (it != p_->added_by_id.end()) return p_->added.tokens()[it->second].content;
  if (const std::string* s = p_->model->id_to_token(id)) return *s;
  return std::nullopt;
}

bool tokenizer::is_special(std::int32_t id) const {
  auto it = p_->added_by_id.find(id);
  return it != p_->added_by_id.end() && p_->added.tokens()[it->second].special;
}

std::int32_t tokenizer::vocab_size() const { return p_->vocab_size; }
std::optional<std::int32_t> tokenizer::bos_id() const { return p_->bos; }
std::optional<std::int32_t> tokenizer::eos_id() const { return p_->eos; }
const std::vector<std::int32_t>& tokenizer::special_prefix() const { return p_->prefix; }
const std::vector<std::int32_t>& tokenizer::special_suffix() const { return p_->suffix; }
const std::string& tokenizer::sha256() const { return p_->sha256; }
const std::string& tokenizer::source() const { return p_->source; }

}  // namespace kvcal
