// calibrate/: kvcal capture — file format (writer / reader round trip, resume cut-back), attention
// statistics against a naive full attention matrix, and the capture run on the tiny llama.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "calibrate/attention_stats.h"
#include "calibrate/capture_format.h"
#include "calibrate/capture_reader.h"
#include "calibrate/capture_writer.h"
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
