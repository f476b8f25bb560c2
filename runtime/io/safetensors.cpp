#include "runtime/io/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "kernels/common/error.h"
#include "kernels/common/half.h"
#include "runtime/io/atomic_file.h"

namespace kvcal {
namespace {

constexpr std::uint64_t kMaxHeader = 100ull << 20;  // same bound as the reference implementation

struct dtype_info {
  st_dtype type;
  const char* name;
  std::size_t size;
};
constexpr dtype_info kDtypes[] = {
    {st_dtype::BOOL, "BOOL", 1}, {st_dtype::U8, "U8", 1},     {st_dtype::I8, "I8", 1},
    {st_dtype::I16, "I16", 2},   {st_dtype::I32, "I32", 4},   {st_dtype::I64, "I64", 8},
    {st_dtype::F16, "F16", 2},   {st_dtype::BF16, "BF16", 2}, {st_dtype::F32, "F32", 4},
    {st_dtype::F64, "F64", 8},
};

const dtype_info& info(st_dtype t) {
  for (const auto& d : kDtypes)
    if (d.type == t) return d;
  KVCAL_ASSERT(false, "unknown st_dtype ", static_cast<int>(t));
  return kDtypes[0];
}

// numel x size with overflow checks; false on overflow.
bool byte_count(const std::vector<std::int64_t>& shape, std::size_t elem, std::uint64_t* out) {
  std::uint64_t n = 1;
  for (auto d : shape) {
    if (d < 0) return false;
    if (d != 0 && n > std::numeric_limits<std::uint64_t>::max() / static_cast<std::uint64_t>(d))
      return false;
    n *= static_cast<std::uint64_t>(d);
  }
  if (n > std::numeric_limits<std::uint64_t>::max() / elem) return false;
  *out = n * elem;
  return true;
}

std::uint64_t read_u64_le(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

std::size_t dtype_size(st_dtype t) { return info(t).size; }
const char* dtype_name(st_dtype t) { return info(t).name; }
bool parse_dtype(const std::string& name, st_dtype* out) {
  for (const auto& d : kDtypes)
    if (name == d.name) {
      *out = d.type;
      return true;
    }
  return false;
}

std::int64_t tensor_view::numel() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

void to_float(const tensor_view& t, float* out) {
  const std::int64_t n = t.numel();
  const std::uint8_t* p = t.data;
  switch (t.dtype) {
    case st_dtype::F32:
      if (n > 0) std::memcpy(out, p, static_cast<std::size_t>(n) * 4);
      break;
    case st_dtype::F16:
    case st_dtype::BF16:
      for (std::int64_t i = 0; i < n; ++i) {
        std::uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = t.dtype == st_dtype::F16 ? fp16_to_float(h) : bf16_to_float(h);
      }
      break;
    case st_dtype::F64:
      for (std::int64_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        out[i] = static_cast<float>(d);
      }
      break;
    default:
      KVCAL_FAIL("tensor '", t.name, "' has dtype ", dtype_name(t.dtype),
                 ", expected a floating-point dtype (F16, BF16, F32, F64)");
  }
}

std::vector<float> to_float(const tensor_view& t) {
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  to_float(t, out.data());
  return out;
}

safetensors_file::safetensors_file(const std::string& path) : file_(path) {
  const std::size_t size = file_.size();
  KVCAL_CHECK(size >= 8, path, ": not a safetensors file: ", size,
              " bytes, shorter than the 8-byte header length");
  const std::uint64_t n = read_u64_le(file_.data());
  KVCAL_CHECK(n <= size - 8, path, ": truncated or not safetensors: header length ", n,
              " exceeds the ", size - 8, " bytes after it");
  KVCAL_CHECK(n <= kMaxHeader, path, ": header length ", n, " exceeds the 100 MiB limit");
  KVCAL_CHECK(n >= 2, path, ": header of ", n, " bytes cannot hold a JSON object");
  const char* hb = reinterpret_cast<const char*>(file_.data() + 8);
  KVCAL_CHECK(hb[0] == '{', path, ": header does not start with a JSON object");

  // Duplicate keys are legal JSON but ambiguous here: the parser callback sees every key of the
  // top-level object before it is merged.
  std::set<std::string> seen;
  std::string duplicate;
  nlohmann::json::parser_callback_t cb = [&](int depth, nlohmann::json::parse_event_t ev,
                                             nlohmann::json& parsed) {
    if (ev == nlohmann::json::parse_event_t::key && depth == 1 && parsed.is_string()) {
      auto key = parsed.get<std::string>();
      if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(hb, hb + n, cb);
  } catch (const nlohmann::json::exception& e) {
    KVCAL_FAIL(path, ": header is not valid JSON: ", e.what());
  }
  KVCAL_CHECK(duplicate.empty(), path, ": duplicate tensor name '", duplicate, "' in header");
  KVCAL_CHECK(header.is_object(), path, ": header is not a JSON object");

  const std::uint8_t* buffer = file_.data() + 8 + n;
  const std::uint64_t buffer_size = size - 8 - n;
  struct span {
    std::uint64_t begin, end;
    std::size_t idx;
  };
  std::vector<span> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      KVCAL_CHECK(v.is_object(), path, ": __metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        KVCAL_CHECK(m.value().is_string(), path, ": __metadata__ entry '", m.key(),
                    "' is not a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    KVCAL_CHECK(v.is_object(), path, ": tensor '", name, "': entry is not an object");
    KVCAL_CHECK(v.contains("dtype") && v["dtype"].is_string(), path, ": tensor '", name,
                "': missing or non-string dtype");
    KVCAL_CHECK(v.contains("shape") && v["shape"].is_array(), path, ": tensor '", name,
                "': missing or non-array shape");
    KVCAL_CHECK(v.contains("data_offsets") && v["data_offsets"].is_array() &&
                    v["data_offsets"].size() == 2,
                path, ": tensor '", name, "': data_offsets must be [begin, end]");
    tensor_view t;
    t.name = name;
    const std::string dt = v["dtype"].get<std::string>();
    KVCAL_CHECK(parse_dtype(dt, &t.dtype), path, ": tensor '", name, "': unknown dtype '", dt, "'");
    for (const auto& d : v["shape"]) {
      KVCAL_CHECK(d.is_number_integer() && d.get<std::int64_t>() >= 0, path, ": tensor '", name,
                  "': shape entries must be non-negative integers");
      t.shape.push_back(d.get<std::int64_t>());
    }
    const auto& off = v["data_offsets"];
    KVCAL_CHECK(off[0].is_number_unsigned() && off[1].is_number_unsigned(), path, ": tensor '",
                name, "': data_offsets must be non-negative integers");
    const std::uint64_t begin = off[0].get<std::uint64_t>(), end = off[1].get<std::uint64_t>();
    KVCAL_CHECK(begin <= end, path, ": tensor '", name, "': data_offsets [", begin, ", ", end,
                "] are reversed");
    KVCAL_CHECK(end <= buffer_size, path, ": tensor '", name, "': data_offsets [", begin, ", ",
                end, "] run past the ", buffer_size, "-byte data buffer (file truncated?)");
    std::uint64_t expect = 0;
    KVCAL_CHECK(byte_count(t.shape, dtype_size(t.dtype), &expect), path, ": tensor '", name,
                "': shape overflows");
    KVCAL_CHECK(end - begin == expect, path, ": tensor '", name, "': ", end - begin,
                " bytes in data_offsets but shape x ", dt, " needs ", expect);
    t.data = buffer + begin;
    t.nbytes = static_cast<std::size_t>(expect);
    spans.push_back({begin, end, tensors_.size()});
    tensors_.push_back(std::move(t));
  }

  std::sort(spans.begin(), spans.end(), [](const span& a, const span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t cursor = 0;
  for (const auto& s : spans) {
    KVCAL_CHECK(s.begin >= cursor, path, ": tensor '", tensors_[s.idx].name,
                "' overlaps the tensor before it (data_offsets begin ", s.begin, " < ", cursor, ")");
    KVCAL_CHECK(s.begin == cursor, path, ": data buffer bytes [", cursor, ", ", s.begin,
                ") belong to no tensor (before '", tensors_[s.idx].name, "')");
    cursor = s.end;
  }
  KVCAL_CHECK(cursor == buffer_size, path, ": data buffer has ", buffer_size - cursor,
              " trailing bytes that belong to no tensor");

  std::vector<tensor_view> ordered;
  ordered.reserve(spans.size());
  for (const auto& s : spans) ordered.push_back(std::move(tensors_[s.idx]));
  tensors_ = std::move(ordered);
  for (std::size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

const tensor_view* safetensors_file::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const tensor_view& safetensors_file::at(const std::string& name) const {
  const tensor_view* t = find(name);
  KVCAL_CHECK(t, path(), ": no tensor '", name, "'");
  return *t;
}

std::string safetensors_header(const std::vector<tensor_out>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps tensors in data order, which makes files easy to read by eye.
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    h["__metadata__"] = m;
  }
  std::uint64_t offset = 0;
  for (const auto& t : tensors) {
    KVCAL_CHECK(!t.name.empty() && t.name != "__metadata__", "safetensors: invalid tensor name '",
                t.name, "'");
    KVCAL_CHECK(!h.contains(t.name), "safetensors: duplicate tensor name '", t.name, "'");
    std::uint64_t bytes = 0;
    KVCAL_CHECK(byte_count(t.shape, dtype_size(t.dtype), &bytes), "safetensors: tensor '", t.name,
                "': invalid shape");
    h[t.name] = {{"dtype", dtype_name(t.dtype)},
                 {"shape", t.shape},
                 {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string json = h.dump();
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  std::uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + json;
}

void write_safetensors(const std::string& path, const std::vector<tensor_out>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string header = safetensors_header(tensors, metadata);
  atomic_output out(path);
  std::FILE* f = std::fopen(out.temp_path().c_str(), "wb");
  KVCAL_CHECK(f, out.temp_path(), ": cannot create: ", std::strerror(errno));
  bool ok = std::fwrite(header.data(), 1, header.size(), f) == header.size();
  for (const auto& t : tensors) {
    std::uint64_t bytes = 0;
    byte_count(t.shape, dtype_size(t.dtype), &bytes);
    if (ok && bytes > 0) {
      KVCAL_CHECK(t.data, "safetensors: tensor '", t.name, "' has no data");
      ok = std::fwrite(t.data, 1, bytes, f) == bytes;
    }
  }
  int err = errno;
  ok = (std::fclose(f) == 0) && ok;
  KVCAL_CHECK(ok, out.temp_path(), ": write failed: ", std::strerror(err));
  out.commit();
}

}  // namespace kvcal
