// Include this instead of <doctest/doctest.h> in tests that use libtorch: Debian's libtorch
// pulls in glog, whose CHECK* macros collide with doctest's.
#pragma once

#include <ATen/ATen.h>

#undef CHECK
#undef CHECK_EQ
#undef CHECK_NE
#undef CHECK_LT
#undef CHECK_LE
#undef CHECK_GT
#undef CHECK_GE
#undef CHECK_NOTNULL

#include <doctest/doctest.h>
