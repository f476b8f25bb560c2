#include "model/weights.h"

#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kernels/common/error.h"
#include "model/torch_util.h"
#include "runtime/io/safetensors.h"

namespace kvcal {
namespace {

bool file_exists(const std::string& path) {
  return std::ifstream(path).good();
}

std::string shape_str(const std::vector<std::int64_t>& s) {
  std::ostringstream os;
  os << "[";
  for (std::size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

// The checkpoint's tensors: name -> shard file (opened lazily, once each).
class checkpoint {
 public:
  explicit checkpoint(const std::string& dir) : dir_(dir) {
    const std::string single = dir + "/model.safetensors";
    const std::string index = dir + "/model.safetensors.index.json";
    if (file_exists(index)) {
      index_path_ = index;
      std::ifstream f(index);
      nlohmann::json j;
      try {
        f >> j;
      } catch (const nlohmann::json::exception& e) {
        KVCAL_FAIL(index, ": not valid JSON: ", e.what());
      }
      KVCAL_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), index,
                  ": no 'weight_map' object");
      for (const auto& [name, file] : j["weight_map"].items()) {
        KVCAL_CHECK(file.is_string(), index, ": weight_map['", name, "'] is not a string");
        const std::string fname = file.get<std::string>();
        KVCAL_CHECK(fname.find('/') == std::string::npos && fname != ".." && !fname.empty(), index,
                    ": weight_map['", name, "'] names '", fname, "', not a file of the folder");
        where_[name] = fname;
      }
    } else {
      KVCAL_CHECK(
          file_exists(single), dir,
          ": no model weights (expected model.safetensors or model.safetensors.index.json)");
      single_ = true;
    }
  }

  // nullptr when the checkpoint has no tensor `name`.
  const tensor_view* find(const std::string& name) {
    if (single_) return open("model.safetensors").find(name);
    auto it = where_.find(name);
    if (it == where_.end()) return nullptr;
    const tensor_view* t = open(it->second).find(name);
    KVCAL_CHECK(t, dir_, "/", it->second, ": no tensor '", name, "' (listed in ", index_path_, ")");
    return t;
  }

  // Where a missing tensor was looked for, for error messages.
  std::string source() const { return single_ ? dir_ + "/model.safetensors" : index_path_; }
  std::string file_of(const std::string& name) const {
    if (single_) return dir_ + "/model.safetensors";
    auto it = where_.find(name);
    return it == where_.end() ? index_path_ : dir_ + "/" + it->second;
  }

 private:
  safetensors_file& open(const std::string& fname) {
    auto it = files_.find(fname);
    if (it == files_.end()) {
      const std::string path = dir_ + "/" + fname;
      KVCAL_CHECK(file_exists(path), path, ": weight shard not found");
      it = files_.emplace(fname, std::make_unique<safetensors_file>(path)).first;
    }
    return *it->second;
  }

  std::string dir_, index_path_;
  bool single_ = false;
  std::map<std::string, std::string> where_;
  std::map<std::string, std::unique_ptr<safetensors_file>> files_;
};

bool is_float(st_dtype t) {
  return t == st_dtype::F32 || t == st_dtype::F16 || t == st_dtype::BF16 || t == st_dtype::F64;
}

at::ScalarType scalar_type_of(st_dtype t) {
  switch (t) {
    case st_dtype::F16:
      return at::kHalf;
    case st_dtype::BF16:
      return at::kBFloat16;
    case st_dtype::F64:
      return at::kDouble;
    default:
      return at::kFloat;
  }
}

class loader {
 public:
  loader(const std::string& dir, at::Device device, at::ScalarType dtype)
      : ck_(dir), device_(device), dtype_(dtype) {}

  bool has(const std::string& name) { return ck_.find(name) != nullptr; }

  // The tensor `name`, checked against `shape`, on the device in the compute dtype.
  at::Tensor get(const std::string& name, const std::vector<std::int64_t>& shape) {
    const tensor_view* t = ck_.find(name);
    KVCAL_CHECK(t, ck_.source(), ": missing tensor '", name, "' (expected shape ", shape_str(shape),
                ")");
    KVCAL_CHECK(t->shape == shape, ck_.file_of(name), ": tensor '", name, "' has shape ",
                shape_str(t->shape), ", expected ", shape_str(shape), " from config.json");
    KVCAL_CHECK(is_float(t->dtype), ck_.file_of(name), ": tensor '", name, "' has dtype ",
                dtype_name(t->dtype), ", expected BF16, F16 or F32");
    const at::ScalarType st = scalar_type_of(t->dtype);
    const std::size_t elem = dtype_size(t->dtype);
    at::Tensor out;
    if (reinterpret_cast<std::uintptr_t>(t->data) % elem == 0) {
      // Straight from the mapping; copy=true so nothing aliases the mapped file afterwards.
      at::Tensor view = at::from_blob(const_cast<std::uint8_t*>(t->data),
                                      std::vector<int64_t>(shape.begin(), shape.end()),
                                      at::TensorOptions().dtype(st));
      out = view.to(device_, dtype_, /*non_blocking=*/false, /*copy=*/true);
    } else {
      out = to_tensor(*t).to(device_, dtype_);
    }
    bytes_ += out.numel() * out.element_size();
    return out;
  }

  at::Tensor get_if(bool present, const std::string& name, const std::vector<std::int64_t>& shape) {
    return present ? get(name, shape) : at::Tensor();
  }

  std::int64_t bytes() const { return bytes_; }

 private:
  checkpoint ck_;
  at::Device device_;
  at::ScalarType dtype_;
  std::int64_t bytes_ = 0;
};

}  // namespace

model_weights load_weights(const std::string& dir, const model_config& cfg, at::Device device,
                           at::ScalarType dtype) {
  loader ld(dir, device, dtype);
  const std::int64_t H = cfg.hidden_size, V = cfg.vocab_size, I = cfg.intermediate_size;
  const std::int64_t d = cfg.head_dim, nq = cfg.num_attention_heads, nkv = cfg.num_key_value_heads;
  const bool qkv_bias = cfg.attention_bias;
  // Llama's attention_bias also puts a bias on o_proj; Qwen2 has q/k/v biases only.
  const bool o_bias = cfg.attention_bias && cfg.model_type != "qwen2";
  const bool mlp_bias = cfg.mlp_bias;

  model_weights w;
  w.embed = ld.get("model.embed_tokens.weight", {V, H});
  w.layers.resize(static_cast<std::size_t>(cfg.num_hidden_layers));
  for (std::int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    layer_weights& L = w.layers[static_cast<std::size_t>(l)];
    L.input_norm = ld.get(p + "input_layernorm.weight", {H});
    L.post_norm = ld.get(p + "post_attention_layernorm.weight", {H});
    at::Tensor q = ld.get(p + "self_attn.q_proj.weight", {nq * d, H});
    at::Tensor k = ld.get(p + "self_attn.k_proj.weight", {nkv * d, H});
    at::Tensor v = ld.get(p + "self_attn.v_proj.weight", {nkv * d, H});
    L.w_qkv = at::cat({q, k, v}, 0);
    if (qkv_bias) {
      L.b_qkv = at::cat({ld.get(p + "self_attn.q_proj.bias", {nq * d}),
                         ld.get(p + "self_attn.k_proj.bias", {nkv * d}),
                         ld.get(p + "self_attn.v_proj.bias", {nkv * d})});
    }
    L.w_o = ld.get(p + "self_attn.o_proj.weight", {H, nq * d});
    L.b_o = ld.get_if(o_bias, p + "self_attn.o_proj.bias", {H});
    at::Tensor gate = ld.get(p + "mlp.gate_proj.weight", {I, H});
    at::Tensor up = ld.get(p + "mlp.up_proj.weight", {I, H});
    L.w_gate_up = at::cat({gate, up}, 0);
    if (mlp_bias) {
      L.b_gate_up =
          at::cat({ld.get(p + "mlp.gate_proj.bias", {I}), ld.get(p + "mlp.up_proj.bias", {I})});
    }
    L.w_down = ld.get(p + "mlp.down_proj.weight", {H, I});
    L.b_down = ld.get_if(mlp_bias, p + "mlp.down_proj.bias", {H});
  }
  w.final_norm = ld.get("model.norm.weight", {H});
  if (cfg.tie_word_embeddings) {
    w.lm_head = w.embed;  // transformers ties lm_head to the embedding, whatever the file holds
  } else {
    w.lm_head = ld.get("lm_head.weight", {V, H});
  }
  // The separately loaded q/k/v and gate/up pieces were freed by the concatenation.
  const auto nbytes = [](const at::Tensor& t) {
    return t.defined() ? t.numel() * t.element_size() : 0;
  };
  w.bytes =
      nbytes(w.embed) + nbytes(w.final_norm) + (cfg.tie_word_embeddings ? 0 : nbytes(w.lm_head));
  for (const auto& L : w.layers)
    for (const at::Tensor* t : {&L.input_norm, &L.post_norm, &L.w_qkv, &L.b_qkv, &L.w_o, &L.b_o,
                                &L.w_gate_up, &L.b_gate_up, &L.w_down, &L.b_down})
      w.bytes += nbytes(*t);
  return w;
}

}  // namespace kvcal
