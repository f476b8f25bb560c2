// calibrate/: kvcal capture — file format (writer / reader round trip, resume cut-back), attention
// statistics against a naive full attention matrix, and the capture run on the tiny llama.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "calibrate/attention_stats.h"
#include "calibrate/capture_format.h"
#include "calibrate/capture_reader.h"
#include "calibrate/capture_writer.h"
#include "calibrate/h5_chunk_filters.h"
#include "calibrate/h5_chunk_writer.h"
#include "calibrate/h5_dataset.h"
#include "kernels/common/error.h"
#include "kernels/common/half.h"
#include "tests/test_util.h"
#include "tests/torch_doctest.h"

using namespace kvcal;

namespace {

capture_header small_header(const std::string& dtype, bool compress) {
  capture_header h;
  h.model_json = R"({"model_type":"llama"})";
  h.tokenizer_sha256 = "00";
  h.inputs_json = "[]";
  h.seq_len = 6;
  h.n_layers = 3;
  h.n_kv_heads = 2;
  h.n_heads = 4;
  h.head_dim = 3;
  h.hidden_size = 5;
  h.dtype = dtype;
  h.record = {capture_item::k, capture_item::v, capture_item::q, capture_item::hidden,
              capture_item::attn};
  h.layers = {0, 2};
  h.attn_window = 4;
  h.compress = compress;
  h.options_json = "{}";
  h.kvcal_version = "test";
  h.command_line = "kvcal capture ...";
  return h;
}

// Deterministic values of dataset `name`, row r, element e.
float value(const std::string& name, int layer, std::int64_t r, std::int64_t e) {
  return static_cast<float>(std::sin(0.37 * r + 0.11 * e + 0.5 * layer + name.size()));
}

void write_block(capture_writer& w, std::int64_t row0, std::int64_t n) {
  const capture_header& h = w.header();
  std::vector<std::int32_t> ids(n), seq(n), pos(n);
  for (std::int64_t i = 0; i < n; ++i) {
    ids[i] = static_cast<std::int32_t>(100 + row0 + i);
    seq[i] = static_cast<std::int32_t>((row0 + i) / h.seq_len);
    pos[i] = static_cast<std::int32_t>((row0 + i) % h.seq_len);
  }
  w.write(capture_ids_path, ids.data(), n);
  w.write(capture_seq_path, seq.data(), n);
  w.write(capture_pos_path, pos.data(), n);
  for (int l : h.layers)
    for (capture_item it : h.record)
      for (const auto& name : capture_item_datasets(it)) {
        std::int64_t e = 1;
        for (auto v : h.inner_shape(name)) e *= v;
        std::vector<float> f(n * e);
        for (std::int64_t r = 0; r < n; ++r)
          for (std::int64_t j = 0; j < e; ++j) f[r * e + j] = value(name, l, row0 + r, j);
        if (h.dtype == "float16" && name.rfind("attn_", 0) != 0) {
          std::vector<std::uint16_t> b(f.size());
          for (std::size_t i = 0; i < f.size(); ++i) b[i] = float_to_fp16(f[i]);
          w.write(capture_layer_path(l, name), b.data(), n);
        } else {
          w.write(capture_layer_path(l, name), f.data(), n);
        }
      }
}

void check_contents(const capture_reader& r, std::int64_t rows) {
  const capture_header& h = r.header();
  REQUIRE(r.n_tokens() == rows);
  auto ids = r.read_tokens("ids", 0, rows);
  auto pos = r.read_tokens("pos", 0, rows);
  for (std::int64_t i = 0; i < rows; ++i) {
    CHECK(ids[i] == 100 + i);
    CHECK(pos[i] == i % h.seq_len);
  }
  const float tol = h.dtype == "float16" ? 1e-3f : 0.0f;
  for (int l : h.layers)
    for (capture_item it : h.record)
      for (const auto& name : capture_item_datasets(it)) {
        const std::int64_t e = r.row_elems(l, name);
        std::vector<float> f(rows * e);
        r.read_rows(l, name, 0, rows, f.data());
        float worst = 0;
        for (std::int64_t i = 0; i < rows; ++i)
          for (std::int64_t j = 0; j < e; ++j)
            worst = std::max(worst, std::abs(f[i * e + j] - value(name, l, i, j)));
        INFO(name, " layer ", l);
        CHECK(worst <= tol);
      }
  CHECK_FALSE(r.has(1, "k"));
}

}  // namespace

TEST_CASE("capture file: writer / reader round trip, fp32 and fp16, with and without deflate") {
  for (const char* dtype : {"float32", "float16"})
    for (bool compress : {false, true}) {
      CAPTURE(dtype);
      CAPTURE(compress);
      test::scratch_dir dir;
      const std::string p = dir.file("c.h5");
      {
        auto w = capture_writer::create(p, small_header(dtype, compress));
        write_block(w, 0, 12);
        w.commit(12, 2);
        write_block(w, 12, 6);
        w.commit(6, 1);
        w.finish();
      }
      capture_reader r(p);
      CHECK(r.header().n_sequences == 3);
      CHECK(r.header().complete);
      CHECK(r.header().layers == std::vector<int>{0, 2});
      CHECK(r.header().records(capture_item::attn));
      CHECK(r.inner_shape(0, "q") == std::vector<std::int64_t>{4, 3});
      CHECK(r.inner_shape(2, "attn_cum") == std::vector<std::int64_t>{2});
      CHECK(r.dataset(capture_layer_path(0, "k")).compressed() == compress);
      check_contents(r, 18);
      CHECK_THROWS_WITH_AS(r.read_rows(0, "k", 10, 9, nullptr),
                           doctest::Contains("beyond the 18 captured tokens"), kvcal::error);
    }
}

TEST_CASE("capture file: uncommitted rows are cut back on reopen; incomplete files are refused") {
  test::scratch_dir dir;
  const std::string p = dir.file("c.h5.partial");
  {
    auto w = capture_writer::create(p, small_header("float32", true));
    write_block(w, 0, 6);
    w.commit(6, 1);
    write_block(w, 6, 6);  // never committed: a crash here
  }
  CHECK_THROWS_WITH_AS(capture_reader{p}, doctest::Contains("incomplete"), kvcal::error);
  {
    capture_reader r(p, true);
    CHECK(r.n_tokens() == 6);
    CHECK(r.dataset(capture_layer_path(0, "v")).rows() == 12);  // extra rows ignored
  }
  {
    auto w = capture_writer::reopen(p);
    CHECK(w.header().n_tokens == 6);
    write_block(w, 6, 12);
    w.commit(12, 2);
    w.finish();
  }
  capture_reader r(p);
  check_contents(r, 18);
}

TEST_CASE("capture file: wrong format / version / not HDF5 are refused with both numbers") {
  test::scratch_dir dir;
  const std::string p = dir.file("c.h5");
  { auto w = capture_writer::create(p, small_header("float32", false)); }
  {
    auto f = h5_file::open_rw(p);
    f.set_attr("version", std::int64_t{2});
  }
  CHECK_THROWS_WITH_AS(capture_reader(p, true),
                       doctest::Contains("capture format version 2 is not supported (this kvcal "
                                         "reads version 1)"),
                       kvcal::error);
  {
    auto f = h5_file::open_rw(p);
    f.set_attr("format", "kvcal.pca");
  }
  CHECK_THROWS_WITH_AS(capture_reader(p, true), doctest::Contains("not a kvcal capture"),
                       kvcal::error);
  test::write_bytes(dir.file("x.h5"), "text");
  CHECK_THROWS_WITH_AS(capture_reader(dir.file("x.h5")), doctest::Contains("not an HDF5 file"),
                       kvcal::error);
}

TEST_CASE("capture chunk rows divide the sequence length") {
  CHECK(capture_chunk_rows(4096, 256) == 4096);
  CHECK(capture_chunk_rows(4096, 2048) == 2048);
  const auto c = capture_chunk_rows(32768, 28 * 128 * 2);
  CHECK(32768 % c == 0);
  CHECK(c * 28 * 128 * 2 <= (4 << 20));
  CHECK(capture_chunk_rows(97, 1 << 20) == 97);  // prime: one chunk per sequence
}

// ---- direct chunk writes (h5_chunk_filters, h5_dataset, h5_chunk_writer) -------------------

namespace {

// Rows of a [rows, 3, 5] dataset as stored: smooth values (compressible) or random bytes (not).
std::vector<std::uint8_t> test_rows(h5_elem e, std::int64_t rows, bool random, unsigned seed) {
  const std::int64_t n = rows * 15;
  std::vector<std::uint8_t> out(static_cast<std::size_t>(n) * h5_elem_size(e));
  if (random) {
    std::mt19937 rng(seed);
    for (auto& b : out) b = static_cast<std::uint8_t>(rng());
    return out;
  }
  for (std::int64_t i = 0; i < n; ++i) {
    const float f = std::round(100 * std::sin(0.01f * static_cast<float>(i + seed))) / 8;
    std::uint8_t* dst = out.data() + i * h5_elem_size(e);
    if (e == h5_elem::f16) {
      const std::uint16_t b = float_to_fp16(f);
      std::memcpy(dst, &b, 2);
    } else if (e == h5_elem::f32) {
      std::memcpy(dst, &f, 4);
    } else {
      const auto v = static_cast<std::int32_t>(f);
      std::memcpy(dst, &v, 4);
    }
  }
  return out;
}

// The stored (filtered) bytes and filter mask of the chunk that starts at `row0`.
std::vector<std::uint8_t> raw_chunk(const h5_dataset& d, std::int64_t row0, std::uint32_t* mask) {
  const hsize_t offset[3] = {static_cast<hsize_t>(row0), 0, 0};
  hsize_t size = 0;
  REQUIRE(H5Dget_chunk_storage_size(d.id(), offset, &size) >= 0);
  std::vector<std::uint8_t> buf(size);
  REQUIRE(H5Dread_chunk(d.id(), H5P_DEFAULT, offset, mask, buf.data()) >= 0);
  return buf;
}

}  // namespace

TEST_CASE("h5 chunk filters: kvcal's shuffle + deflate bytes equal HDF5's own pipeline") {
  // HDF5 itself is the reference: a chunk written through its filter pipeline (direct writes off)
  // is read back raw and compared with what h5_chunk_filters::encode makes of the same rows.
  for (h5_elem e : {h5_elem::f16, h5_elem::f32, h5_elem::i32})
    for (int level : {1, 6}) {
      CAPTURE(h5_elem_name(e));
      CAPTURE(level);
      test::scratch_dir dir;
      auto f = h5_file::create(dir.file("x.h5"));
      h5_dataset_options o;
      o.chunk_rows = 40;
      o.deflate_level = level;
      h5_dataset d = h5_dataset::create(f.id(), "/d", e, {3, 5}, o, "x.h5");
      REQUIRE(d.filters().supported);
      CHECK(d.filters().shuffle);
      CHECK(d.filters().deflate_level == level);
      CHECK(d.filters().deflate_index == 1);
      d.set_direct_writes(false);
      const auto rows = test_rows(e, 40, false, 1);
      d.write_rows(0, 40, rows.data());
      std::uint32_t mask = 99;
      const auto stored = raw_chunk(d, 0, &mask);
      std::vector<std::uint8_t> mine;
      CHECK(d.filters().encode(rows.data(), rows.size(), mine) == mask);
      CHECK(mask == 0);
      CHECK(stored.size() < rows.size());
      CHECK(mine == stored);
      // Shuffle alone, against the definition.
      std::vector<std::uint8_t> sh(rows.size());
      h5_shuffle_bytes(rows.data(), rows.size(), h5_elem_size(e), sh.data());
      const std::size_t es = h5_elem_size(e), n = rows.size() / es;
      bool same = true;
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < es; ++j) same = same && sh[j * n + i] == rows[i * es + j];
      CHECK(same);
    }
}

TEST_CASE("h5 direct chunk writes: aligned and unaligned appends read back identically") {
  for (h5_elem e : {h5_elem::f16, h5_elem::f32, h5_elem::i32})
    for (bool compress : {false, true})
      for (bool random : {false, true}) {
        CAPTURE(h5_elem_name(e));
        CAPTURE(compress);
        CAPTURE(random);
        test::scratch_dir dir;
        h5_dataset_options o;
        o.chunk_rows = 7;
        o.compress = compress;
        const auto rows = test_rows(e, 70, random, 2);
        const std::size_t row_bytes = 15 * h5_elem_size(e);
        auto at = [&](std::int64_t r) { return rows.data() + r * row_bytes; };
        // Appends: 3 whole chunks; 1 whole chunk + 3 rows; 11 unaligned rows; 2 chunks + 6 rows,
        // the last block through h5_write_blocks with 3 threads, the rest through write_rows.
        struct block {
          std::int64_t row0, n, direct;
        };
        const block blocks[] = {{0, 21, 3}, {21, 10, 1}, {31, 11, 0}, {42, 20, 2}, {62, 8, 0}};
        {
          auto f = h5_file::create(dir.file("direct.h5"));
          h5_dataset d = h5_dataset::create(f.id(), "/d", e, {3, 5}, o, "direct.h5");
          h5_dataset ref = h5_dataset::create(f.id(), "/ref", e, {3, 5}, o, "direct.h5");
          ref.set_direct_writes(false);
          for (const block& b : blocks) {
            CHECK(d.direct_chunks(b.row0, b.n) == b.direct);
            if (b.row0 == 42)
              h5_write_blocks({{&d, b.row0, b.n, at(b.row0)}, {&ref, b.row0, b.n, at(b.row0)}}, 3);
            else
              d.write_rows(b.row0, b.n, at(b.row0));
            if (b.row0 != 42) ref.write_rows(b.row0, b.n, at(b.row0));
          }
          CHECK(d.rows() == 70);
          if (compress && random) {  // deflate did not pay: stored shuffled, deflate skipped
            std::uint32_t mask = 0;
            CHECK(raw_chunk(d, 0, &mask).size() == 7 * row_bytes);
            CHECK(mask == 2u);
          }
          if (compress && !random)
            CHECK(d.storage_bytes() < 70 * static_cast<std::int64_t>(row_bytes));
        }
        // Read back through HDF5's read path (filters applied by HDF5), in a fresh open.
        auto f = h5_file::open_read(dir.file("direct.h5"));
        for (const char* name : {"/d", "/ref"}) {
          CAPTURE(name);
          h5_dataset d = h5_dataset::open(f.id(), name, "direct.h5");
          CHECK(d.compressed() == compress);
          CHECK(d.filters().shuffle == compress);
          std::vector<std::uint8_t> back(rows.size());
          d.read_rows(0, 70, back.data());
          CHECK(back == rows);
          std::vector<std::uint8_t> part(5 * row_bytes);  // rows straddling two chunks
          d.read_rows(19, 5, part.data());
          CHECK(std::memcmp(part.data(), at(19), part.size()) == 0);
        }
      }
  CHECK_THROWS_WITH_AS(h5_write_blocks({}, 0), doctest::Contains("write threads"), kvcal::error);
}

TEST_CASE("h5 direct chunk writes read back through h5py (skipped without python3 + h5py)") {
  // h5py is the reader outside kvcal the format promises; a Python with h5py is looked for on
  // PATH, then at /usr/bin/python3 (Debian's python3-h5py).
  std::string py;
  for (const char* c : {"python3", "/usr/bin/python3"})
    if (std::system((std::string(c) + " -c 'import h5py' >/dev/null 2>&1").c_str()) == 0) {
      py = c;
      break;
    }
  if (py.empty()) {
    MESSAGE("no python3 with h5py: h5py read-back not checked");
    return;
  }
  test::scratch_dir dir;
  std::string names;
  {
    auto f = h5_file::create(dir.file("d.h5"));
    for (h5_elem e : {h5_elem::f16, h5_elem::f32, h5_elem::i32})
      for (bool compress : {false, true})
        for (bool random : {false, true}) {
          const std::string name = std::string(h5_elem_name(e)) + (compress ? "_z" : "_raw") +
                                   (random ? "_random" : "_smooth");
          h5_dataset_options o;
          o.chunk_rows = 8;
          o.compress = compress;
          h5_dataset d = h5_dataset::create(f.id(), "/" + name, e, {3, 5}, o, "d.h5");
          const auto rows = test_rows(e, 45, random, 3);
          const std::size_t rb = 15 * h5_elem_size(e);
          h5_write_blocks({{&d, 0, 20, rows.data()}}, 2);             // 2 chunks + 4 rows
          d.write_rows(20, 4, rows.data() + 20 * rb);                 // unaligned
          h5_write_blocks({{&d, 24, 21, rows.data() + 24 * rb}}, 2);  // 2 chunks + 5 rows
          test::write_bytes(dir.file(name + ".bin"),
                            std::string(reinterpret_cast<const char*>(rows.data()), rows.size()));
          names += (names.empty() ? "" : ",") + name;
        }
  }
  const std::string script = R"(
import sys, h5py, numpy as np
d, names = sys.argv[1], sys.argv[2].split(",")
f = h5py.File(d + "/d.h5", "r")
masked = 0
for n in names:
    ds = f[n]
    want = np.fromfile(d + "/" + n + ".bin", dtype=ds.dtype).reshape(ds.shape)
    assert np.array_equal(ds[...].view(np.uint8), want.view(np.uint8)), n
    assert (ds.compression == "gzip" and ds.shuffle) == ("_z" in n), n
    if "_z" in n:
        masked += ds.id.read_direct_chunk((0, 0, 0))[0] != 0
assert masked == 3, masked
print("h5py-ok")
)";
  test::write_bytes(dir.file("check.py"), script);
  const std::string cmd = py + " '" + dir.file("check.py") + "' '" + dir.path() + "' " + names +
                          " > '" + dir.file("out.txt") + "' 2>&1";
  const int rc = std::system(cmd.c_str());
  INFO(test::read_bytes(dir.file("out.txt")));
  CHECK(rc == 0);
  CHECK(test::read_bytes(dir.file("out.txt")).find("h5py-ok") != std::string::npos);
}

namespace {
// The full [T, T] attention of every head, then the definitions of capture_format.h literally.
attention_stats naive_stats(const at::Tensor& q, const at::Tensor& k, std::int64_t W,
                            std::int64_t sw) {
  const auto B = q.size(0), H = q.size(1), T = q.size(2), d = q.size(3), G = k.size(1);
  const auto g = H / G;
  auto qd = q.to(at::kDouble), kd = k.to(at::kDouble);
  attention_stats s{at::zeros({B, G, T}, at::kDouble), at::zeros({B, G, T}, at::kDouble),
                    at::zeros({B, G, T}, at::kDouble)};
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h) {
      at::Tensor sc = at::matmul(qd[b][h], kd[b][h / g].t()) / std::sqrt(double(d));  // [T, T]
      for (std::int64_t i = 0; i < T; ++i)
        for (std::int64_t j = 0; j < T; ++j)
          if (j > i || (sw > 0 && i - j >= sw)) sc[i][j] = -std::numeric_limits<double>::infinity();
      at::Tensor p = at::softmax(sc, 1) / double(g);
      auto pa = p.accessor<double, 2>();
      auto cum = s.cum.accessor<double, 3>(), nxt = s.next.accessor<double, 3>(),
           mx = s.max.accessor<double, 3>();
      (void)mx;
      for (std::int64_t i = 0; i < T; ++i)
        for (std::int64_t j = 0; j <= i; ++j) {
          cum[b][h / g][j] += pa[i][j];
          if (i - j < W) nxt[b][h / g][j] += pa[i][j];
        }
    }
  // max over queries of the group mean
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t G0 = 0; G0 < G; ++G0) {
      at::Tensor a = at::zeros({T, T}, at::kDouble);
      for (std::int64_t h = G0 * g; h < (G0 + 1) * g; ++h) {
        at::Tensor sc = at::matmul(qd[b][h], kd[b][G0].t()) / std::sqrt(double(d));
        at::Tensor i = at::arange(T, at::kLong).unsqueeze(1),
                   j = at::arange(T, at::kLong).unsqueeze(0);
        at::Tensor masked = j.gt(i);
        if (sw > 0) masked = masked.logical_or((i - j).ge(sw));
        sc.masked_fill_(masked, -std::numeric_limits<double>::infinity());
        a += at::softmax(sc, 1) / double(g);
      }
      s.max[b][G0].copy_(std::get<0>(a.max(0)));
    }
  return s;
}
}  // namespace

TEST_CASE("attention statistics equal a naive full attention matrix (GQA, blocks, windows)") {
  at::manual_seed(3);
  struct shape {
    std::int64_t B, H, G, T, d, W, sw, block_bytes;
  };
  for (shape c : {shape{1, 4, 2, 17, 8, 5, 0, 1}, shape{2, 6, 2, 23, 16, 64, 0, 1 << 20},
                  shape{1, 3, 3, 19, 4, 3, 7, 4000}, shape{2, 8, 1, 13, 8, 1, 0, 1 << 30}}) {
    CAPTURE(c.T);
    at::Tensor q = at::randn({c.B, c.H, c.T, c.d}) * 2;
    at::Tensor k = at::randn({c.B, c.G, c.T, c.d}) * 2;
    at::Tensor pos = at::arange(c.T, at::kLong);
    attention_stats s = compute_attention_stats(q, k, pos, c.W, c.sw, c.block_bytes);
    attention_stats n = naive_stats(q, k, c.W, c.sw);
    CHECK(s.cum.sizes().vec() == std::vector<std::int64_t>{c.B, c.G, c.T});
    CHECK(at::allclose(s.cum.to(at::kDouble), n.cum, 1e-5, 1e-5));
    CHECK(at::allclose(s.next.to(at::kDouble), n.next, 1e-5, 1e-5));
    CHECK(at::allclose(s.max.to(at::kDouble), n.max, 1e-5, 1e-5));
    // Every query's attention sums to 1, so the H2O scores of a sequence sum to T.
    CHECK(s.cum.sum().item<double>() == doctest::Approx(double(c.B * c.G * c.T)).epsilon(1e-4));
    if (c.W >= c.T) CHECK(at::allclose(s.next, s.cum));
  }
}

// ---- the capture run on the tiny checkpoints ----------------------------------------------------

#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "calibrate/capture.h"
#include "kernels/common/log.h"
#include "model/full_cache.h"
#include "model/llama.h"
#include "model/rope.h"
#include "runtime/io/sha256.h"

extern char** environ;

namespace {

std::string fixture(const std::string& name) {
  return std::string(KVCAL_SOURCE_DIR) + "/tests/fixtures/hf/" + name;
}

const char* corpus_text =
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
    "age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the "
    "season of Light, it was the season of Darkness, it was the spring of hope, it was the "
    "winter of despair. Caf\xc3\xa9 na\xc3\xafve \xe2\x82\xac 42.\n";

capture_params base_params(const test::scratch_dir& dir, const std::string& model = "llama") {
  test::write_bytes(dir.file("a.txt"), corpus_text);
  test::write_bytes(dir.file("b.txt"), std::string(corpus_text).substr(0, 120));
  capture_params p;
  p.model_dir = fixture(model);
  p.text_files = {dir.file("a.txt"), dir.file("b.txt")};
  p.out = dir.file("cap.h5");
  p.seq_len = 24;
  p.batch = 2;
  p.attn_window = 5;
  p.show_progress = false;
  p.command_line = "test";
  return p;
}

std::vector<float> read_all(const capture_reader& r, int layer, const std::string& name) {
  std::vector<float> v(static_cast<std::size_t>(r.n_tokens() * r.row_elems(layer, name)));
  r.read_rows(layer, name, 0, r.n_tokens(), v.data());
  return v;
}

// [rows, inner...] tensor of a dataset rows [row0, row0 + n).
at::Tensor rows_of(const capture_reader& r, int layer, const std::string& name, std::int64_t row0,
                   std::int64_t n) {
  std::vector<std::int64_t> shape = {n};
  for (auto v : r.inner_shape(layer, name)) shape.push_back(v);
  at::Tensor t = at::empty(shape, at::kFloat);
  r.read_rows(layer, name, row0, n, t.data_ptr<float>());
  return t;
}

struct recording_hook : layer_hook {
  std::vector<layer_activations> acts;
  void on_layer(const layer_activations& a) override { acts.push_back(a); }
};

// Every dataset of two captures is identical (bit for bit).
void check_identical(const std::string& a, const std::string& b) {
  capture_reader ra(a), rb(b);
  REQUIRE(ra.n_tokens() == rb.n_tokens());
  CHECK(ra.header().n_sequences == rb.header().n_sequences);
  for (const char* t : {"ids", "seq", "pos"})
    CHECK(ra.read_tokens(t, 0, ra.n_tokens()) == rb.read_tokens(t, 0, rb.n_tokens()));
  for (int l : ra.header().layers)
    for (capture_item it : ra.header().record)
      for (const auto& name : capture_item_datasets(it)) {
        INFO(name, " layer ", l);
        CHECK(read_all(ra, l, name) == read_all(rb, l, name));
      }
}

}  // namespace

TEST_CASE("capture of the tiny llama: K/V/Q/hidden equal the model's hook outputs") {
  set_log_level(log_level::error);
  test::scratch_dir dir;
  capture_params p = base_params(dir);
  p.record = "k,k_rope,v,q,hidden,attn";
  capture_result res = run_capture(p);
  CHECK(res.complete);
  CHECK_FALSE(test::file_exists(p.out + ".partial"));
  // The timing breakdown covers the parts of the run.
  CHECK(res.loop_tokens == res.tokens);
  CHECK(res.loop_file_bytes > 0);
  CHECK(res.loop_file_bytes <= res.file_bytes);
  CHECK(res.load_seconds > 0);
  CHECK(res.loop_seconds > 0);
  CHECK(res.writer_wait_seconds <= res.loop_seconds);
  CHECK(res.finish_seconds > 0);
  CHECK(res.tokenize_seconds + res.load_seconds + res.loop_seconds + res.finish_seconds <=
        res.seconds);
  CHECK(res.write_threads >= 1);
  capture_reader r(p.out);
  const capture_header& h = r.header();
  CHECK(h.n_tokens == res.tokens);
  CHECK(h.layers == std::vector<int>{0, 1});
  CHECK(h.dtype == "float32");
  CHECK(h.seq_len == 24);
  CHECK(h.inputs_json.find(sha256_file(dir.file("a.txt"))) != std::string::npos);

  auto model = llama_model::load(p.model_dir, at::kCPU, at::kFloat);
  const auto ids = r.read_tokens("ids", 0, r.n_tokens());
  const auto seq = r.read_tokens("seq", 0, r.n_tokens());
  const auto pos = r.read_tokens("pos", 0, r.n_tokens());
  rope rp(model.config());
  std::int64_t row0 = 0;
  int checked = 0;
  while (row0 < r.n_tokens()) {
    std::int64_t T = 0;
    while (row0 + T < r.n_tokens() && seq[row0 + T] == seq[row0]) {
      CHECK(pos[row0 + T] == T);
      ++T;
    }
    CHECK(T <= 24);
    at::Tensor x = at::empty({1, T}, at::kLong);
    for (std::int64_t t = 0; t < T; ++t) x[0][t] = ids[row0 + t];
    full_cache cache(model.config(), 1, at::kCPU, at::kFloat);
    recording_hook hook;
    forward_options fo;
    fo.logits = logits_mode::none;
    fo.maybe_hook = &hook;
    model.forward(x, cache, fo);
    REQUIRE(hook.acts.size() == 2);
    for (const auto& a : hook.acts) {
      const int l = a.layer;
      auto cmp = [&](const char* name, const at::Tensor& want /* [T, ...] */) {
        INFO(name, " layer ", l, " sequence ", seq[row0]);
        CHECK(at::allclose(rows_of(r, l, name, row0, T), want, 1e-5, 1e-6));
      };
      cmp("k", a.k[0].transpose(0, 1));
      cmp("k_rope", a.k_rope[0].transpose(0, 1));
      cmp("v", a.v[0].transpose(0, 1));
      cmp("q", a.q[0].transpose(0, 1));
      cmp("hidden", a.hidden[0]);
      // Pre-RoPE K from the file, rotated at the stored positions, is the post-RoPE K.
      at::Tensor k = rows_of(r, l, "k", row0, T).transpose(0, 1).unsqueeze(0);  // [1, n_kv, T, d]
      at::Tensor p_t = at::arange(T, at::kLong);
      at::Tensor rotated = apply_rope(k, rp.cos_sin(p_t, at::kFloat));
      CHECK(at::allclose(rotated[0].transpose(0, 1), rows_of(r, l, "k_rope", row0, T), 1e-5, 1e-6));
      // Attention statistics from the file's q (rotated) and k_rope, through the naive matrix.
      at::Tensor q = rows_of(r, l, "q", row0, T).transpose(0, 1).unsqueeze(0);
      at::Tensor q_rope = apply_rope(q, rp.cos_sin(p_t, at::kFloat));
      at::Tensor k_rope = rows_of(r, l, "k_rope", row0, T).transpose(0, 1).unsqueeze(0);
      attention_stats n = naive_stats(q_rope, k_rope, h.attn_window, 0);
      CHECK(at::allclose(rows_of(r, l, "attn_cum", row0, T).to(at::kDouble), n.cum[0].t(), 1e-4,
                         1e-5));
      CHECK(at::allclose(rows_of(r, l, "attn_next", row0, T).to(at::kDouble), n.next[0].t(), 1e-4,
                         1e-5));
      CHECK(at::allclose(rows_of(r, l, "attn_max", row0, T).to(at::kDouble), n.max[0].t(), 1e-4,
                         1e-5));
      ++checked;
    }
    row0 += T;
  }
  CHECK(checked >= 4);
}

TEST_CASE("capture: sliding window (mistral), fp16 storage, layer subset, max tokens, seed") {
  set_log_level(log_level::error);
  test::scratch_dir dir;
  capture_params p = base_params(dir, "mistral");
  p.record = "k_rope,q,attn";
  p.layers = "1";
  p.store = "float16";
  p.max_tokens = 60;
  p.seed = 7;
  p.compress = false;
  run_capture(p);
  capture_reader r(p.out);
  CHECK(r.n_tokens() == 60);
  CHECK(r.header().dtype == "float16");
  CHECK_FALSE(r.has(0, "k_rope"));
  CHECK(r.has(1, "k_rope"));
  CHECK_FALSE(r.has(1, "v"));
  const auto seq = r.read_tokens("seq", 0, 60);
  CHECK(seq.back() == 2);  // 24 + 24 + 12
  auto model = llama_model::load(p.model_dir, at::kCPU, at::kFloat);
  rope rp(model.config());
  const std::int64_t T = 24;
  at::Tensor p_t = at::arange(T, at::kLong);
  at::Tensor q = rows_of(r, 1, "q", 24, T).transpose(0, 1).unsqueeze(0);
  at::Tensor q_rope = apply_rope(q, rp.cos_sin(p_t, at::kFloat));
  at::Tensor k_rope = rows_of(r, 1, "k_rope", 24, T).transpose(0, 1).unsqueeze(0);
  attention_stats n = naive_stats(q_rope, k_rope, r.header().attn_window, 8);
  // fp16-rounded q / k: statistics agree to fp16 accuracy.
  CHECK(at::allclose(rows_of(r, 1, "attn_cum", 24, T).to(at::kDouble), n.cum[0].t(), 2e-2, 2e-3));
  CHECK(at::allclose(rows_of(r, 1, "attn_max", 24, T).to(at::kDouble), n.max[0].t(), 2e-2, 2e-3));
  // The window: attention comes only from the next 8 queries, so attn_next (W = 5) < attn_cum.
  CHECK(rows_of(r, 1, "attn_next", 24, T).sum().item<double>() <
        rows_of(r, 1, "attn_cum", 24, T).sum().item<double>());
  // A different seed gives another order of the same full sequences.
  capture_params p2 = p;
  p2.out = dir.file("cap2.h5");
  p2.seed = 8;
  run_capture(p2);
  capture_reader r2(p2.out);
  CHECK(r2.read_tokens("ids", 0, 60) != r.read_tokens("ids", 0, 60));
}

TEST_CASE("capture: an interrupted capture resumed equals an uninterrupted one") {
  set_log_level(log_level::error);
  test::scratch_dir dir;
  capture_params p = base_params(dir);
  p.batch = 1;
  p.record = "k,v,q,attn";
  p.out = dir.file("full.h5");
  p.write_threads = 3;
  run_capture(p);

  capture_params q = p;
  q.out = dir.file("resumed.h5");
  q.write_threads = 1;  // the thread count changes nothing in the file
  q.stop_after_sequences = 3;
  capture_result first = run_capture(q);
  CHECK_FALSE(first.complete);
  CHECK(first.sequences == 3);
  CHECK_FALSE(test::file_exists(q.out));
  CHECK(test::file_exists(q.out + ".partial"));
  q.stop_after_sequences = 0;
  q.resume = true;
  capture_result second = run_capture(q);
  CHECK(second.complete);
  CHECK(second.resumed_from_sequence == 3);
  check_identical(p.out, q.out);
  // Nothing left to resume.
  CHECK_THROWS_WITH_AS(run_capture(q), doctest::Contains("already complete"), kvcal::error);
}

// Run by the test below in a child process (the test binary re-executes itself): captures and
// SIGKILLs itself mid-way through its third batch, once the batch's rows are written and before
// they are committed. (Not a timer after the second commit: a kill inside a commit's metadata
// flush leaves an HDF5 file that no reader can open, which --resume then reports.)
TEST_CASE("capture child killed by SIGKILL (runs only when spawned by the resume test)") {
  const char* dir = std::getenv("KVCAL_CAPTURE_CHILD_DIR");
  if (!dir) return;
  set_log_level(log_level::quiet);
  test::scratch_dir unused;
  capture_params p;
  p.model_dir = fixture("llama");
  p.text_files = {std::string(dir) + "/a.txt", std::string(dir) + "/b.txt"};
  p.out = std::string(dir) + "/killed.h5";
  p.seq_len = 24;
  p.batch = 1;
  p.attn_window = 5;
  p.record = "k,v,q,attn";
  p.show_progress = false;
  p.command_line = "test";
  p.maybe_before_commit = [](std::int64_t n) {
    if (n == 3) ::raise(SIGKILL);  // rows of sequence 3 written, not committed
  };
  run_capture(p);
  ::raise(SIGKILL);  // not reached (three sequences at least); still die without cleanup
}

TEST_CASE("capture: SIGKILL mid-run, then --resume, equals an uninterrupted capture") {
  set_log_level(log_level::error);
  test::scratch_dir dir;
  capture_params p = base_params(dir);
  p.batch = 1;
  p.record = "k,v,q,attn";
  p.out = dir.file("full.h5");
  run_capture(p);

  const std::string env = "KVCAL_CAPTURE_CHILD_DIR=" + dir.path();
  std::vector<char*> envp;
  for (char** e = environ; *e; ++e) envp.push_back(*e);
  envp.push_back(const_cast<char*>(env.c_str()));
  envp.push_back(nullptr);
  std::string self = "/proc/self/exe", filter = "--test-case=capture child killed*";
  char* argv[] = {self.data(), filter.data(), nullptr};
  pid_t pid = 0;
  REQUIRE(posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv, envp.data()) == 0);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGKILL);
  REQUIRE(test::file_exists(dir.file("killed.h5.partial")));
  CHECK_FALSE(test::file_exists(dir.file("killed.h5")));

  capture_params q = p;
  q.out = dir.file("killed.h5");
  q.resume = true;
  capture_result r = run_capture(q);
  CHECK(r.complete);
  CHECK(r.resumed_from_sequence == 2);
  check_identical(p.out, q.out);
}

TEST_CASE("capture: bad inputs fail with a clear error and leave no damaged file") {
  set_log_level(log_level::quiet);
  test::scratch_dir dir;
  capture_params p = base_params(dir);
  auto fails = [&](capture_params q, const std::string& msg) {
    CHECK_THROWS_WITH_AS(run_capture(q), doctest::Contains(msg.c_str()), kvcal::error);
    CHECK_FALSE(test::file_exists(q.out));
    CHECK_FALSE(test::file_exists(q.out + ".partial"));
  };
  {
    capture_params q = p;
    q.text_files = {dir.file("missing.txt")};
    fails(q, "missing.txt: no such file");
  }
  {
    test::write_bytes(dir.file("empty.txt"), "");
    capture_params q = p;
    q.text_files = {dir.file("a.txt"), dir.file("empty.txt")};
    fails(q, "empty.txt: empty file");
  }
  {
    test::write_bytes(dir.file("latin1.txt"), "caf\xe9 ok");
    capture_params q = p;
    q.text_files = {dir.file("latin1.txt")};
    fails(q, "latin1.txt: not valid UTF-8 (byte offset 3)");
  }
  {
    capture_params q = p;
    q.record = "k,values";
    fails(q, "--record: unknown item 'values'");
  }
  {
    capture_params q = p;
    q.layers = "0,5";
    fails(q, "--layers: '5' is outside the model's layers 0..1");
  }
  {
    capture_params q = p;
    q.seq_len = 257;
    fails(q, "--seq-len 257 is beyond the model's context (max_position_embeddings 256");
  }
  {
    capture_params q = p;
    q.out = dir.file("no/such/dir/cap.h5");
    fails(q, "does not exist");
  }
  if (::geteuid() != 0) {  // root writes anywhere
    ::mkdir(dir.file("ro").c_str(), 0555);
    capture_params q = p;
    q.out = dir.file("ro/cap.h5");
    fails(q, "is not writable");
  }
  CHECK(find_invalid_utf8("ok \xe2\x82\xac") == -1);
  CHECK(find_invalid_utf8("\xed\xa0\x80") == 0);  // surrogate
  CHECK(find_invalid_utf8("ab\xc0\xaf") == 2);    // overlong
  CHECK(find_invalid_utf8("abc\xe2\x82") == 3);   // truncated
  CHECK(parse_layer_list("0-1", 2) == std::vector<int>{0, 1});
  CHECK_THROWS_WITH_AS(parse_layer_list("x", 2), doctest::Contains("not a layer index"),
                       kvcal::error);
}

TEST_CASE("capture: --resume against a different model or options is refused, file untouched") {
  set_log_level(log_level::quiet);
  test::scratch_dir dir;
  capture_params p = base_params(dir);
  p.stop_after_sequences = 2;
  run_capture(p);
  const std::string partial = p.out + ".partial";
  REQUIRE(test::file_exists(partial));
  const std::string before = sha256_file(partial);

  capture_params q = p;
  q.stop_after_sequences = 0;
  q.resume = true;
  q.model_dir = fixture("llama-headdim");
  CHECK_THROWS_WITH_AS(run_capture(q), doctest::Contains("cannot resume"), kvcal::error);
  try {
    run_capture(q);
  } catch (const kvcal::error& e) {
    CHECK(std::string(e.what()).find("model.head_dim: 16 in the partial capture, 32 now") !=
          std::string::npos);
  }
  q.model_dir = p.model_dir;
  q.seq_len = 32;
  q.attn_window = 6;
  CHECK_THROWS_WITH_AS(run_capture(q), doctest::Contains("options.seq_len: 24 in the partial"),
                       kvcal::error);
  q.seq_len = 24;
  q.attn_window = 5;
  test::write_bytes(dir.file("b.txt"), "changed input");
  CHECK_THROWS_WITH_AS(run_capture(q), doctest::Contains("inputs:"), kvcal::error);
  CHECK(sha256_file(partial) == before);
  CHECK_FALSE(test::file_exists(p.out));
}

#include <sstream>

#include "calibrate/capture_report.h"

TEST_CASE("capture report: sizes and per-head K / V summary") {
  set_log_level(log_level::quiet);
  test::scratch_dir dir;
  capture_params p = base_params(dir);
  p.record = "k,v";
  run_capture(p);
  CHECK(is_capture_file(p.out));
  CHECK_FALSE(is_capture_file(dir.file("a.txt")));
  std::ostringstream os;
  describe_capture(p.out, os);
  const std::string s = os.str();
  CHECK(s.find("kvcal capture, format version 1, complete") != std::string::npos);
  CHECK(s.find("K top8") != std::string::npos);
  CHECK(s.find("    1    1 |") != std::string::npos);  // layer 1, KV head 1
  // head_dim 16: the top 32 components hold all the variance.
  CHECK(s.find("100.0%") != std::string::npos);
}
