// Status checks for host code that calls the CUDA runtime, cuBLAS or cuSOLVER: a failed call
// throws kvcal::error naming the call and the status (bad state reaches the user as one line).
// Header-only; the cuBLAS / cuSOLVER macros need their library header included by the caller.
//
//   KVCAL_CUDA_OK(cudaMalloc(&p, bytes));
//   KVCAL_CUBLAS_OK(cublasCreate(&h));
//   KVCAL_CUSOLVER_OK(cusolverDnCreate(&s));
#pragma once

#include <cuda_runtime.h>

#include "kernels/common/error.h"

#define KVCAL_CUDA_OK(expr)                                                        \
  do {                                                                             \
    cudaError_t e_ = (expr);                                                       \
    KVCAL_CHECK(e_ == cudaSuccess, "CUDA: ", #expr, ": ", cudaGetErrorString(e_)); \
  } while (0)

#define KVCAL_CUBLAS_OK(expr)                                                \
  do {                                                                       \
    cublasStatus_t s_ = (expr);                                              \
    KVCAL_CHECK(s_ == CUBLAS_STATUS_SUCCESS, "cuBLAS: ", #expr, ": status ", \
                static_cast<int>(s_));                                       \
  } while (0)

#define KVCAL_CUSOLVER_OK(expr)                                                  \
  do {                                                                           \
    cusolverStatus_t s_ = (expr);                                                \
    KVCAL_CHECK(s_ == CUSOLVER_STATUS_SUCCESS, "cuSOLVER: ", #expr, ": status ", \
                static_cast<int>(s_));                                           \
  } while (0)
