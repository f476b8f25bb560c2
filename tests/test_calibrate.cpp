// calibrate/: HDF5 layer (attributes round trip, clear errors on non-HDF5 input).
#include <doctest/doctest.h>

#include "calibrate/h5.h"
#include "kernels/common/error.h"
#include "tests/test_util.h"

using namespace kvcal;

TEST_CASE("h5_file attributes round trip") {
  kvcal::test::scratch_dir dir;
  std::string p = dir.file("a.h5");
  {
    auto f = h5_file::create(p);
    f.set_attr("format", "kvcal.test");
    f.set_attr("version", std::int64_t{3});
    f.set_attr("empty", std::string());
    f.set_attr("version", std::int64_t{4});  // overwrite
  }
  auto f = h5_file::open_read(p);
  CHECK(f.get_string_attr("format") == "kvcal.test");
  CHECK(f.get_int_attr("version") == 4);
  CHECK(f.get_string_attr("empty").empty());
  CHECK_FALSE(f.has_attr("nope"));
  CHECK_THROWS_WITH_AS(f.get_int_attr("nope"), doctest::Contains("missing attribute 'nope'"),
                       kvcal::error);
  CHECK_THROWS_WITH_AS(f.get_int_attr("format"), doctest::Contains("not an integer"),
                       kvcal::error);
}

TEST_CASE("h5_file rejects missing, non-HDF5 and truncated files with the file named") {
  kvcal::test::scratch_dir dir;
  CHECK_THROWS_WITH_AS(h5_file::open_read(dir.file("missing.h5")),
                       doctest::Contains("missing.h5: no such file"), kvcal::error);
  kvcal::test::write_bytes(dir.file("text.h5"), "this is not hdf5");
  CHECK_THROWS_WITH_AS(h5_file::open_read(dir.file("text.h5")),
                       doctest::Contains("text.h5: not an HDF5 file"), kvcal::error);
  std::string p = dir.file("t.h5");
  {
    auto f = h5_file::create(p);
    f.set_attr("format", "kvcal.test");
  }
  std::string bytes = kvcal::test::read_bytes(p);
  kvcal::test::write_bytes(dir.file("cut.h5"), bytes.substr(0, bytes.size() / 3));
  CHECK_THROWS_AS(h5_file::open_read(dir.file("cut.h5")), kvcal::error);
}
