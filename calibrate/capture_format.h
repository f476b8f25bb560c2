// The kvcal capture file (HDF5): a model's activations on a text corpus, written by
// `kvcal capture`, read by fit-pca / train-ae / train-policy / inspect. docs/formats/capture.md
// is the full description; this is the layout.
//
// Format "kvcal.capture", version 1. N = tokens of complete sequences (root attribute n_tokens).
//
// Root attributes
//   format         string  "kvcal.capture"
//   version        int64   1 (readers refuse any other, printing both)
//   model          string  JSON model fingerprint: {"model_type", "n_layers", "n_kv_heads",
//                          "head_dim", "rope": {...}, "config_sha256"} (as in presets)
//   tokenizer_sha256 string  SHA-256 of the tokenizer.json bytes
//   inputs         string  JSON [{"path", "sha256", "bytes"}] in the order they were read
//   seq_len, n_layers, n_kv_heads, n_heads, head_dim, hidden_size   int64
//   dtype          string  "float16" | "float32": element type of the activation datasets
//   record         string  JSON list of recorded items, e.g. ["k","v","attn"]
//   layers         string  JSON list of recorded layer indices, e.g. [0,1,2]
//   attn_window    int64   W of attn_next
//   sliding_window int64   the model's attention window (0 = none), as applied to the attention
//                          statistics; absent in captures written before it was recorded
//   compression    string  "shuffle+deflate1" | "none"
//   options        string  JSON of every option that changes the content (resume compares it)
//   kvcal_version, command_line   string
//   n_tokens       int64   tokens in complete sequences; every dataset is valid up to this row
//                          (a partial file may hold more rows: ignore them)
//   n_sequences    int64
//   complete       int64   1 once the capture finished (the file was renamed from .partial)
//
// Datasets (row r = r-th token; tokens of one sequence are contiguous, sequences in order)
//   /tokens/ids    int32 [N]   token id
//   /tokens/seq    int32 [N]   sequence index (0-based)
//   /tokens/pos    int32 [N]   position inside its sequence (restarts at 0)
//   /layers/<L>/k        [N, n_kv_heads, head_dim]  keys before RoPE       (record "k")
//   /layers/<L>/k_rope   [N, n_kv_heads, head_dim]  keys after RoPE        (record "k_rope")
//   /layers/<L>/v        [N, n_kv_heads, head_dim]                         (record "v")
//   /layers/<L>/q        [N, n_heads, head_dim]     queries before RoPE    (record "q")
//   /layers/<L>/hidden   [N, hidden_size]  hidden state entering attention (after the input
//                                          RMSNorm)                         (record "hidden")
//   /layers/<L>/attn_cum, attn_next, attn_max   float32 [N, n_kv_heads]    (record "attn")
// <L> is the plain decimal layer index. Activations are stored in `dtype`; every dataset is
// chunked along N (a chunk never spans two sequences), filtered with shuffle + deflate level 1
// unless compression is "none".
//
// Attention statistics of key token j (sequence-local positions, causal mask, and the model's
// sliding window when it has one), from the post-RoPE q and k in fp32:
//   P_h[i, j]  = softmax_j(q_h[i] . k_g[j] / sqrt(head_dim))  for query head h of KV group g
//   A_g[i, j]  = (1 / group_size) * sum over the group_size query heads h of group g of P_h[i, j]
//   attn_cum[j, g]  = sum_{i >= j} A_g[i, j]              (H2O score, the token's own query
//                                                          included)
//   attn_next[j, g] = sum_{j <= i < j + W} A_g[i, j]      (W = attn_window; equals attn_cum when
//                                                          W >= seq_len)
//   attn_max[j, g]  = max_{i >= j} A_g[i, j]
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kvcal {

inline constexpr const char* capture_format_name = "kvcal.capture";
inline constexpr int capture_format_version = 1;

// What can be recorded. Values only ever appended.
enum class capture_item { k, k_rope, v, q, hidden, attn };
const char* capture_item_name(capture_item it);
std::optional<capture_item> parse_capture_item(const std::string& name);
const std::vector<capture_item>& all_capture_items();

// Dataset paths.
inline constexpr const char* capture_ids_path = "/tokens/ids";
inline constexpr const char* capture_seq_path = "/tokens/seq";
inline constexpr const char* capture_pos_path = "/tokens/pos";
// "/layers/<layer>/<name>"; name: k, k_rope, v, q, hidden, attn_cum, attn_next, attn_max.
std::string capture_layer_path(int layer, const std::string& name);
// The dataset names an item produces in each layer (attn -> the three statistics).
std::vector<std::string> capture_item_datasets(capture_item it);

// Everything in the root attributes.
struct capture_header {
  std::string model_json;  // model fingerprint (JSON object, rope included)
  std::string tokenizer_sha256;
  std::string inputs_json;  // [{"path", "sha256", "bytes"}]
  std::int64_t seq_len = 0, n_layers = 0, n_kv_heads = 0, n_heads = 0, head_dim = 0,
               hidden_size = 0;
  std::string dtype = "float32";  // of the activation datasets
  std::vector<capture_item> record;
  std::vector<int> layers;  // recorded layers, ascending
  std::int64_t attn_window = 0;
  std::int64_t sliding_window = -1;  // the model's (0 = none); -1 = not recorded (older capture)
  bool compress = true;
  std::string options_json;  // content-changing options (compared on resume)
  std::string kvcal_version, command_line;
  std::int64_t n_tokens = 0, n_sequences = 0;
  bool complete = false;

  bool records(capture_item it) const;
  // Inner shape of a layer dataset ([n_kv, d], [n_heads, d], [hidden] or [n_kv]).
  std::vector<std::int64_t> inner_shape(const std::string& dataset_name) const;
};

}  // namespace kvcal
