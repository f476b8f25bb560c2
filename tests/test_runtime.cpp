// runtime/io: safetensors reader/writer (round trip, malformed input), atomic files, mmap.
// Built and run under ASan + UBSan in CI (scripts/test.sh): malformed input must never crash.
#include <doctest/doctest.h>

#include <cstring>
#include <numeric>
#include <sstream>

#include "kernels/common/error.h"
#include "runtime/io/atomic_file.h"
#include "runtime/io/mapped_file.h"
#include "runtime/io/safetensors.h"
#include "runtime/io/safetensors_report.h"
#include "tests/test_util.h"

using namespace kvcal;
using kvcal::test::scratch_dir;

namespace {

// Builds a raw safetensors file from a header string and a data buffer.
std::string raw_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

// The message of the kvcal::error thrown when opening `bytes` as a safetensors file.
std::string open_error(const scratch_dir& dir, const std::string& bytes) {
  std::string p = dir.file("bad.safetensors");
  kvcal::test::write_bytes(p, bytes);
  try {
    safetensors_file f(p);
  } catch (const kvcal::error& e) {
    std::string msg = e.what();
    CHECK_MESSAGE(msg.find(p) != std::string::npos, "message must name the file: ", msg);
    return msg;
  }
  return "";
}

}  // namespace

TEST_CASE("safetensors round trip of every dtype, metadata and odd shapes") {
  scratch_dir dir;
  std::vector<std::uint8_t> b8(7);
  std::iota(b8.begin(), b8.end(), 1);
  std::vector<std::int16_t> i16 = {-3, 0, 32767};
  std::vector<std::int32_t> i32 = {-1, 2, 3, 4, 5, 6};
  std::vector<std::int64_t> i64 = {1ll << 40, -7};
  std::vector<std::uint16_t> f16 = {0x3c00, 0xc000};  // 1, -2
  std::vector<std::uint16_t> bf16 = {0x3f80, 0x4040};  // 1, 3
  std::vector<float> f32(17 * 3);
  std::iota(f32.begin(), f32.end(), -5.5f);
  std::vector<double> f64 = {3.25};
  std::vector<std::uint8_t> boolean = {1, 0, 1};
  std::vector<std::int8_t> i8 = {-128, 127};
  std::vector<tensor_out> in = {
      {"u8", st_dtype::U8, {7}, b8.data()},
      {"i8", st_dtype::I8, {2}, i8.data()},
      {"i16", st_dtype::I16, {3}, i16.data()},
      {"i32", st_dtype::I32, {2, 3}, i32.data()},
      {"i64", st_dtype::I64, {2}, i64.data()},
      {"f16", st_dtype::F16, {2}, f16.data()},
      {"bf16", st_dtype::BF16, {1, 2}, bf16.data()},
      {"f32", st_dtype::F32, {17, 3}, f32.data()},
      {"f64 scalar", st_dtype::F64, {}, f64.data()},
      {"bool", st_dtype::BOOL, {3}, boolean.data()},
      {"empty", st_dtype::F32, {0, 4}, nullptr},
  };
  std::map<std::string, std::string> meta = {{"format", "kvcal.test"}, {"json", "{\"a\": [1]}"}};
  std::string p = dir.file("rt.safetensors");
  write_safetensors(p, in, meta);
  CHECK_FALSE(kvcal::test::file_exists(p + ".partial"));

  safetensors_file f(p);
  CHECK(f.metadata() == meta);
  REQUIRE(f.tensors().size() == in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    const auto& t = f.tensors()[i];  // data order == write order
    CHECK(t.name == in[i].name);
    CHECK(t.dtype == in[i].dtype);
    CHECK(t.shape == in[i].shape);
    REQUIRE(t.nbytes == static_cast<std::size_t>(t.numel()) * dtype_size(t.dtype));
    if (t.nbytes) CHECK(std::memcmp(t.data, in[i].data, t.nbytes) == 0);
  }
  CHECK(to_float(f.at("f16")) == std::vector<float>{1.0f, -2.0f});
  CHECK(to_float(f.at("bf16")) == std::vector<float>{1.0f, 3.0f});
  CHECK(to_float(f.at("f32")) == f32);
  CHECK(to_float(f.at("f64 scalar")) == std::vector<float>{3.25f});
  CHECK_THROWS_WITH_AS(to_float(f.at("i32")), doctest::Contains("expected a floating-point"),
                       kvcal::error);
  CHECK(f.find("nope") == nullptr);
  CHECK_THROWS_WITH_AS(f.at("nope"), doctest::Contains("no tensor 'nope'"), kvcal::error);

  // The header is padded so the data buffer starts 8-byte aligned.
  std::string bytes = kvcal::test::read_bytes(p);
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  CHECK(n % 8 == 0);

  std::ostringstream report;
  describe_safetensors(p, 3, report);
  CHECK(report.str().find("11 tensors") != std::string::npos);
  CHECK(report.str().find("8 more") != std::string::npos);
}

TEST_CASE("safetensors writer rejects duplicate and reserved names") {
  scratch_dir dir;
  float x = 1;
  CHECK_THROWS_WITH_AS(write_safetensors(dir.file("a"), {{"x", st_dtype::F32, {1}, &x},
                                                         {"x", st_dtype::F32, {1}, &x}}),
                       doctest::Contains("duplicate"), kvcal::error);
  CHECK_THROWS_AS(write_safetensors(dir.file("a"), {{"__metadata__", st_dtype::F32, {1}, &x}}),
                  kvcal::error);
  CHECK_FALSE(kvcal::test::file_exists(dir.file("a")));
  CHECK_FALSE(kvcal::test::file_exists(dir.file("a.partial")));
}

TEST_CASE("malformed safetensors: one clear error each, never a crash") {
  scratch_dir dir;
  const std::string f4(4, 'x');  // 4 data bytes
  auto hdr = [](const std::string& body) { return "{" + body + "}"; };

  CHECK(open_error(dir, "").find("shorter than the 8-byte header length") != std::string::npos);
  CHECK(open_error(dir, "abc").find("shorter") != std::string::npos);
  {
    std::string b(8, '\0');
    b[0] = 100;  // header length 100, nothing after
    CHECK(open_error(dir, b).find("exceeds the 0 bytes") != std::string::npos);
  }
  {
    std::string b(8, '\xff');  // header length 2^64 - 1
    CHECK(open_error(dir, b + "{}").find("header length") != std::string::npos);
  }
  CHECK(open_error(dir, raw_file("not json!", "")).find("does not start with a JSON object") !=
        std::string::npos);
  CHECK(open_error(dir, raw_file("{\"a\": ", "")).find("not valid JSON") != std::string::npos);
  CHECK(open_error(dir, raw_file("{} trailing", "")).find("not valid JSON") != std::string::npos);
  CHECK(open_error(dir, raw_file(hdr("\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                                     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}"),
                                 f4))
            .find("duplicate tensor name 'a'") != std::string::npos);
  CHECK(open_error(dir, raw_file(hdr("\"a\":{\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]}"),
                                 f4))
            .find("unknown dtype 'F17'") != std::string::npos);
  CHECK(open_error(dir, raw_file(hdr("\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}"),
                                 f4))
            .find("needs 8") != std::string::npos);
  CHECK(open_error(dir, raw_file(hdr("\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}"),
                                 f4))
            .find("run past") != std::string::npos);
  CHECK(open_error(dir, raw_file(hdr("\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}"),
                                 f4))
            .find("reversed") != std::string::npos);
  CHECK(open_error(dir, raw_file(hdr("\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}"),
                                 f4))
            .find("non-negative") != std::string::npos);
  CHECK(open_error(dir, raw_file(hdr("\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}"),
                                 f4))
            .find("non-negative") != std::string::npos);
  CHECK(open_error(dir, raw_file(hdr("\"a\":{\"dtype\":\"F32\",\"shape\":[1]}"), f4))
            .find("data_offsets must be") != std::string::npos);
  CHECK(open_error(dir, raw_file(hdr("\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}"), f4))
            .find("dtype") != std::string::npos);
  CHECK(open_error(dir, raw_file(hdr("\"a\": 5"), f4)).find("'a'") != std::string::npos);
  CHECK(open_error(dir, raw_file("[1, 2]", "")).find("JSON object") != std::string::npos);
  CHECK(open_error(dir, raw_file(hdr("\"__metadata__\":{\"k\":1}"), ""))
            .find("not a string") != std::string::npos);
  // Overlap: b starts inside a.
  CHECK(open_error(dir, raw_file(hdr("\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                                     "\"b\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[2,4]}"),
                                 f4))
            .find("overlaps") != std::string::npos);
  // Hole, and trailing bytes.
  CHECK(open_error(dir, raw_file(hdr("\"a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[2,4]}"),
                                 f4))
            .find("belong to no tensor") != std::string::npos);
  CHECK(open_error(dir, raw_file(hdr("\"a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]}"),
                                 f4))
            .find("trailing bytes") != std::string::npos);
  // Shape product overflowing 64 bits.
  CHECK(open_error(dir, raw_file(hdr("\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],"
                                     "\"data_offsets\":[0,4]}"),
                                 f4))
            .find("overflows") != std::string::npos);

  // Truncating a valid file anywhere gives an error, never a crash.
  float vals[6] = {1, 2, 3, 4, 5, 6};
  std::string good = dir.file("good.safetensors");
  write_safetensors(good, {{"w", st_dtype::F32, {2, 3}, vals}}, {{"m", "x"}});
  std::string bytes = kvcal::test::read_bytes(good);
  for (std::size_t cut = 0; cut < bytes.size(); ++cut)
    CHECK_FALSE(open_error(dir, bytes.substr(0, cut)).empty());
  // A missing file and a directory.
  CHECK_THROWS_WITH_AS(safetensors_file(dir.file("missing.safetensors")),
                       doctest::Contains("cannot open"), kvcal::error);
  CHECK_THROWS_WITH_AS(safetensors_file(dir.path()), doctest::Contains("is a directory"),
                       kvcal::error);
}

TEST_CASE("atomic_output: rename on commit, nothing left on failure") {
  scratch_dir dir;
  std::string p = dir.file("out.txt");
  write_file_atomic(p, "hello");
  CHECK(kvcal::test::read_bytes(p) == "hello");
  CHECK_FALSE(kvcal::test::file_exists(p + ".partial"));
  {
    atomic_output out(p);
    kvcal::test::write_bytes(out.temp_path(), "half-written");
    // no commit: an error happened
  }
  CHECK(kvcal::test::read_bytes(p) == "hello");  // the old file is intact
  CHECK_FALSE(kvcal::test::file_exists(p + ".partial"));
  {
    atomic_output out(p);
    out.keep_partial_on_failure();
    kvcal::test::write_bytes(out.temp_path(), "resumable");
  }
  CHECK(kvcal::test::read_bytes(p + ".partial") == "resumable");
  CHECK_THROWS_WITH_AS(atomic_output(dir.file("no/such/dir/x")), doctest::Contains("does not exist"),
                       kvcal::error);
  CHECK_THROWS_WITH_AS(atomic_output(dir.path()), doctest::Contains("is a directory"), kvcal::error);
}

TEST_CASE("mapped_file maps bytes and handles empty files") {
  scratch_dir dir;
  kvcal::test::write_bytes(dir.file("e"), "");
  mapped_file e(dir.file("e"));
  CHECK(e.size() == 0);
  kvcal::test::write_bytes(dir.file("f"), "abc");
  mapped_file f(dir.file("f"));
  REQUIRE(f.size() == 3);
  CHECK(std::memcmp(f.data(), "abc", 3) == 0);
  mapped_file g = std::move(f);
  CHECK(g.size() == 3);
  CHECK(f.data() == nullptr);
}

#include <nlohmann/json.hpp>

#include "runtime/io/sha256.h"
#include "runtime/model_config.h"

TEST_CASE("sha256 matches FIPS 180-4 test vectors") {
  CHECK(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(sha256_hex(std::string(1000000, 'a')) ==
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  kvcal::test::scratch_dir dir;
  kvcal::test::write_bytes(dir.file("abc"), "abc");
  CHECK(sha256_file(dir.file("abc")) == sha256_hex("abc"));
}

TEST_CASE("model_config: legacy and v5 spellings, head_dim, GQA, and clear refusals") {
  using nlohmann::json;
  json base = {{"model_type", "llama"},        {"vocab_size", 512},
               {"hidden_size", 64},            {"intermediate_size", 128},
               {"num_hidden_layers", 2},       {"num_attention_heads", 4},
               {"num_key_value_heads", 2},     {"rms_norm_eps", 1e-5},
               {"max_position_embeddings", 256}, {"rope_theta", 500000.0},
               {"torch_dtype", "bfloat16"}};
  auto c = parse_model_config(base, "cfg");
  CHECK(c.head_dim == 16);
  CHECK(c.n_rep() == 2);
  CHECK(c.rope.theta == 500000.0);
  CHECK(c.rope.type == rope_type::none);
  CHECK(c.torch_dtype == "bfloat16");

  json hd = base;
  hd["head_dim"] = 32;  // explicit head_dim != hidden / heads
  CHECK(parse_model_config(hd, "cfg").head_dim == 32);

  json legacy = base;
  legacy["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
  c = parse_model_config(legacy, "cfg");
  CHECK(c.rope.type == rope_type::llama3);
  CHECK(c.rope.factor == 8.0);
  CHECK(c.rope.original_max_position_embeddings == 64);

  json v5 = base;
  v5.erase("rope_theta");
  v5["rope_parameters"] = {{"rope_type", "linear"}, {"rope_theta", 1234.0}, {"factor", 2.0}};
  c = parse_model_config(v5, "cfg");
  CHECK(c.rope.type == rope_type::linear);
  CHECK(c.rope.theta == 1234.0);

  json qwen = base;
  qwen["model_type"] = "qwen2";
  CHECK(parse_model_config(qwen, "cfg").attention_bias);

  auto refuses = [&](json j, const char* field) {
    try {
      parse_model_config(j, "some/config.json");
    } catch (const kvcal::error& e) {
      std::string msg = e.what();
      CHECK_MESSAGE(msg.find("some/config.json") != std::string::npos, msg);
      CHECK_MESSAGE(msg.find(field) != std::string::npos, msg);
      return;
    }
    FAIL("accepted a config it must refuse: ", field);
  };
  json bad = base;
  bad["model_type"] = "gpt_neox";
  refuses(bad, "gpt_neox");
  bad = base;
  bad.erase("hidden_size");
  refuses(bad, "hidden_size");
  bad = base;
  bad["num_key_value_heads"] = 3;
  refuses(bad, "num_key_value_heads");
  bad = base;
  bad["rope_scaling"] = {{"rope_type", "longrope"}, {"factor", 2.0}};
  refuses(bad, "longrope");
  bad = base;
  bad["hidden_act"] = "gelu";
  refuses(bad, "hidden_act");
  bad = qwen;
  bad["use_sliding_window"] = true;
  refuses(bad, "use_sliding_window");
}
