// GPU smoke tests (label gpu): run only on the GPU machine (`ctest -L gpu`).
#include <doctest/doctest.h>

#include "kernels/common/build_info.h"
#include "kernels/common/cuda_device.h"

using namespace kvcal;

TEST_CASE("this build has CUDA and sees a GPU") {
  REQUIRE(build_with_cuda());
  INFO(cuda_device_summary());
  REQUIRE(cuda_device_count() >= 1);
}

TEST_CASE("a kvcal kernel runs and writes every element") { CHECK(cuda_self_test() == ""); }

TEST_CASE("cuSOLVER handle and a symmetric eigensolve") { CHECK(cusolver_self_test() == ""); }
