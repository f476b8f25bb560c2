// model/: libtorch bridges (safetensors -> at::Tensor, option parsing).
#include "tests/torch_doctest.h"

#include "kernels/common/error.h"
#include "model/torch_util.h"
#include "tests/test_util.h"

using namespace kvcal;

TEST_CASE("safetensors tensors become at::Tensor with dtype, shape and values") {
  kvcal::test::scratch_dir dir;
  std::vector<float> f32 = {1.5f, -2.0f, 3.0f, 4.0f, 5.0f, 6.25f};
  std::vector<std::uint16_t> bf16 = {0x3f80, 0xc040};  // 1, -3
  std::vector<std::uint16_t> f16 = {0x3c00, 0x4400};   // 1, 4
  std::vector<std::int64_t> i64 = {7, -9};
  std::string p = dir.file("t.safetensors");
  write_safetensors(p, {{"f32", st_dtype::F32, {2, 3}, f32.data()},
                        {"bf16", st_dtype::BF16, {2}, bf16.data()},
                        {"f16", st_dtype::F16, {2, 1}, f16.data()},
                        {"i64", st_dtype::I64, {2}, i64.data()}});
  safetensors_file f(p);
  at::Tensor a = to_tensor(f.at("f32"));
  CHECK((a.scalar_type() == at::kFloat));
  CHECK(a.sizes().vec() == std::vector<int64_t>{2, 3});
  CHECK(a[1][2].item<float>() == 6.25f);
  at::Tensor b = to_tensor(f.at("bf16")).to(at::kFloat);
  CHECK(b[1].item<float>() == -3.0f);
  at::Tensor h = to_tensor(f.at("f16"));
  CHECK((h.scalar_type() == at::kHalf));
  CHECK(h.to(at::kFloat)[1][0].item<float>() == 4.0f);
  CHECK(to_tensor(f.at("i64"))[1].item<int64_t>() == -9);
}

TEST_CASE("--device and --dtype parsing") {
  CHECK(parse_device("cpu").is_cpu());
  CHECK_THROWS_WITH_AS(parse_device("tpu"), doctest::Contains("expected cpu, cuda"), kvcal::error);
  if (!at::hasCUDA())
    CHECK_THROWS_WITH_AS(parse_device("cuda"), doctest::Contains("--device cpu"), kvcal::error);
  CHECK((parse_compute_dtype("bf16") == at::kBFloat16));
  CHECK((parse_compute_dtype("float32") == at::kFloat));
  CHECK(std::string(compute_dtype_name(at::kHalf)) == "fp16");
  CHECK_THROWS_WITH_AS(parse_compute_dtype("int4"), doctest::Contains("--dtype int4"),
                       kvcal::error);
}
