// What this binary was built from and with; filled in at build time (cmake/build_info.cmake).
#pragma once

namespace kvcal {
const char* build_version();        // "0.1.0"
const char* build_commit();         // short git hash, "-dirty" when built from a modified tree
bool build_with_cuda();             // CUDA sources compiled in
const char* build_torch_version();  // libtorch version found at configure time
}  // namespace kvcal
