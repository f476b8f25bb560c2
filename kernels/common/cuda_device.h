// CUDA availability at run time. Every caller has a CPU path: these never throw when CUDA is
// absent from the build or the machine has no GPU.
#pragma once

#include <string>

namespace kvcal {

// Number of usable CUDA devices; 0 when the build has no CUDA or the driver reports none.
int cuda_device_count();

// One line describing the devices (or why there are none), for `kvcal --version` and logs.
std::string cuda_device_summary();

// Runs a tiny kernel on device 0 and checks its result; returns an empty string on success, the
// failure otherwise. Used by the GPU smoke test and `kvcal --version`.
std::string cuda_self_test();

// Creates a cuSOLVER handle and solves a small symmetric eigenproblem with known eigenvalues;
// empty string on success, the failure otherwise.
std::string cusolver_self_test();

}  // namespace kvcal
