#include "kernels/common/error.h"
#include "kernels/cuda/packed_kv.h"

namespace kvcal {

namespace {
thread_local std::string launch_error_message;
}

const std::string& last_launch_error() {
  return launch_error_message;
}

void set_launch_error(std::string msg) {
  launch_error_message = std::move(msg);
}

void check_launch(cudaError_t err, const char* what) {
  KVCAL_CHECK(err == cudaSuccess, what, ": ", cudaGetErrorString(err),
              launch_error_message.empty() ? "" : ": ", launch_error_message);
}

}  // namespace kvcal
