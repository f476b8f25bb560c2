// bench/decode_bench.h in a build without CUDA: the timings refuse with a clear error.
#include "bench/decode_bench.h"
#include "kernels/common/error.h"

namespace kvcal {

decode_timing time_decode_case(const decode_case& c, const decode_shape&) {
  KVCAL_FAIL(c.name,
             ": this kvcal was built without CUDA (decode benchmarks need a GPU build: "
             "scripts/build-gpu.sh)");
}

}  // namespace kvcal
