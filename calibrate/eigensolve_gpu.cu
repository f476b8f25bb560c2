// GPU batched symmetric eigensolve with cuSOLVER: see calibrate/eigensolve.h.
//
// Primary: cusolverDnXsyevBatched (CUDA 12.6+/13, any n). Fallbacks when it is unavailable:
// syevjBatched (Jacobi, only n <= 32) or a loop of syevd over the batch.
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <string>
#include <vector>

#include "calibrate/eigensolve.h"
#include "kernels/common/cuda_check.h"
#include "kernels/common/cuda_device.h"
#include "kernels/common/error.h"

namespace kvcal {

namespace {
enum class route { xsyev_batched, syevj_batched, syevd_loop };
}  // namespace

struct gpu_eigensolver::impl {
  std::int64_t batch = 0, d = 0;
  bool fp64 = true;
  route how = route::xsyev_batched;
  std::string method;
  cusolverDnHandle_t h = nullptr;
  cusolverDnParams_t params = nullptr;
  syevjInfo_t syevj = nullptr;
  void* d_work = nullptr;
  std::vector<char> h_work;
  size_t d_bytes = 0;
  int lwork = 0;  // legacy API workspace (elements)
  int* d_info = nullptr;

  ~impl() {
    cudaFree(d_work);
    cudaFree(d_info);
    if (syevj) cusolverDnDestroySyevjInfo(syevj);
    if (params) cusolverDnDestroyParams(params);
    if (h) cusolverDnDestroy(h);
  }
};

gpu_eigensolver::gpu_eigensolver(std::int64_t batch, std::int64_t d, bool fp64, bool use_syevj)
    : p_(new impl) {
  impl& m = *p_;
  try {
    KVCAL_CHECK(cuda_device_count() > 0, "GPU eigensolve: no CUDA device (", cuda_device_summary(),
                ")");
    m.batch = batch;
    m.d = d;
    m.fp64 = fp64;
    KVCAL_CUSOLVER_OK(cusolverDnCreate(&m.h));
    KVCAL_CUSOLVER_OK(cusolverDnCreateParams(&m.params));
    KVCAL_CUDA_OK(cudaMalloc(&m.d_info, static_cast<size_t>(batch) * sizeof(int)));
    const cudaDataType t = fp64 ? CUDA_R_64F : CUDA_R_32F;
    size_t h_bytes = 0;
    cusolverStatus_t st = CUSOLVER_STATUS_NOT_SUPPORTED;
    if (!use_syevj)
      st = cusolverDnXsyevBatched_bufferSize(m.h, m.params, CUSOLVER_EIG_MODE_VECTOR,
                                             CUBLAS_FILL_MODE_LOWER, d, t, nullptr, d, t, nullptr,
                                             t, &m.d_bytes, &h_bytes, batch);
    if (st == CUSOLVER_STATUS_SUCCESS) {
      m.how = route::xsyev_batched;
      m.method = std::string("cusolverDnXsyevBatched (") + (fp64 ? "fp64" : "fp32") + ")";
      m.h_work.resize(h_bytes + 1);
    } else if (d <= 32) {
      m.how = route::syevj_batched;
      m.method = std::string("cusolverDn") + (fp64 ? "D" : "S") + "syevjBatched";
      KVCAL_CUSOLVER_OK(cusolverDnCreateSyevjInfo(&m.syevj));
      const int n = static_cast<int>(d);
      if (fp64)
        KVCAL_CUSOLVER_OK(cusolverDnDsyevjBatched_bufferSize(
            m.h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, nullptr, n, nullptr, &m.lwork,
            m.syevj, static_cast<int>(batch)));
      else
        KVCAL_CUSOLVER_OK(cusolverDnSsyevjBatched_bufferSize(
            m.h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, nullptr, n, nullptr, &m.lwork,
            m.syevj, static_cast<int>(batch)));
      m.d_bytes = static_cast<size_t>(m.lwork) * (fp64 ? 8 : 4);
    } else {
      m.how = route::syevd_loop;
      m.method = std::string("cusolverDn") + (fp64 ? "D" : "S") + "syevd (loop over the batch)";
      const int n = static_cast<int>(d);
      if (fp64)
        KVCAL_CUSOLVER_OK(cusolverDnDsyevd_bufferSize(m.h, CUSOLVER_EIG_MODE_VECTOR,
                                                      CUBLAS_FILL_MODE_LOWER, n, nullptr, n,
                                                      nullptr, &m.lwork));
      else
        KVCAL_CUSOLVER_OK(cusolverDnSsyevd_bufferSize(m.h, CUSOLVER_EIG_MODE_VECTOR,
                                                      CUBLAS_FILL_MODE_LOWER, n, nullptr, n,
                                                      nullptr, &m.lwork));
      m.d_bytes = static_cast<size_t>(m.lwork) * (fp64 ? 8 : 4);
    }
    KVCAL_CUDA_OK(cudaMalloc(&m.d_work, m.d_bytes + 16));
  } catch (...) {
    delete p_;
    throw;
  }
}

gpu_eigensolver::~gpu_eigensolver() {
  delete p_;
}

const std::string& gpu_eigensolver::method() const {
  return p_->method;
}

void gpu_eigensolver::run(void* a, void* w) {
  impl& m = *p_;
  const cudaDataType t = m.fp64 ? CUDA_R_64F : CUDA_R_32F;
  const int n = static_cast<int>(m.d);
  switch (m.how) {
    case route::xsyev_batched:
      KVCAL_CUSOLVER_OK(cusolverDnXsyevBatched(
          m.h, m.params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, m.d, t, a, m.d, t, w, t,
          m.d_work, m.d_bytes, m.h_work.data(), m.h_work.size() - 1, m.d_info, m.batch));
      break;
    case route::syevj_batched:
      if (m.fp64)
        KVCAL_CUSOLVER_OK(cusolverDnDsyevjBatched(
            m.h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, static_cast<double*>(a), n,
            static_cast<double*>(w), static_cast<double*>(m.d_work), m.lwork, m.d_info, m.syevj,
            static_cast<int>(m.batch)));
      else
        KVCAL_CUSOLVER_OK(cusolverDnSsyevjBatched(
            m.h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, static_cast<float*>(a), n,
            static_cast<float*>(w), static_cast<float*>(m.d_work), m.lwork, m.d_info, m.syevj,
            static_cast<int>(m.batch)));
      break;
    case route::syevd_loop:
      for (std::int64_t b = 0; b < m.batch; ++b) {
        if (m.fp64)
          KVCAL_CUSOLVER_OK(cusolverDnDsyevd(
              m.h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n,
              static_cast<double*>(a) + b * m.d * m.d, n, static_cast<double*>(w) + b * m.d,
              static_cast<double*>(m.d_work), m.lwork, m.d_info + b));
        else
          KVCAL_CUSOLVER_OK(cusolverDnSsyevd(m.h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER,
                                             n, static_cast<float*>(a) + b * m.d * m.d, n,
                                             static_cast<float*>(w) + b * m.d,
                                             static_cast<float*>(m.d_work), m.lwork, m.d_info + b));
      }
      break;
  }
  std::vector<int> info(static_cast<size_t>(m.batch));
  KVCAL_CUDA_OK(
      cudaMemcpy(info.data(), m.d_info, info.size() * sizeof(int), cudaMemcpyDeviceToHost));
  for (size_t b = 0; b < info.size(); ++b)
    KVCAL_CHECK(info[b] == 0, "GPU eigensolve (", m.method, "): matrix ", b,
                " did not converge (info ", info[b], ")");
}

std::vector<eig_result> eigh_batched_gpu(const std::vector<std::vector<double>>& mats,
                                         std::int64_t d, std::string* used) {
  const std::int64_t batch = static_cast<std::int64_t>(mats.size());
  if (batch == 0) return {};
  gpu_eigensolver solver(batch, d, /*fp64=*/true);
  const size_t dd = static_cast<size_t>(d * d);
  std::vector<double> host(dd * static_cast<size_t>(batch));
  // Symmetric: row-major and column-major storage are the same matrix.
  for (size_t b = 0; b < mats.size(); ++b) std::copy(mats[b].begin(), mats[b].end(), &host[b * dd]);
  double *d_a = nullptr, *d_w = nullptr;
  KVCAL_CUDA_OK(cudaMalloc(&d_a, host.size() * sizeof(double)));
  std::vector<double> w(static_cast<size_t>(batch * d));
  try {
    KVCAL_CUDA_OK(cudaMalloc(&d_w, w.size() * sizeof(double)));
    KVCAL_CUDA_OK(
        cudaMemcpy(d_a, host.data(), host.size() * sizeof(double), cudaMemcpyHostToDevice));
    solver.run(d_a, d_w);
    KVCAL_CUDA_OK(
        cudaMemcpy(host.data(), d_a, host.size() * sizeof(double), cudaMemcpyDeviceToHost));
    KVCAL_CUDA_OK(cudaMemcpy(w.data(), d_w, w.size() * sizeof(double), cudaMemcpyDeviceToHost));
  } catch (...) {
    cudaFree(d_a);
    cudaFree(d_w);
    throw;
  }
  cudaFree(d_a);
  cudaFree(d_w);
  std::vector<eig_result> out(mats.size());
  for (size_t b = 0; b < mats.size(); ++b) {
    eig_result& r = out[b];
    r.values.assign(&w[b * static_cast<size_t>(d)], &w[(b + 1) * static_cast<size_t>(d)]);
    r.vectors.resize(dd);
    // Column-major output: element (i, j) of eigenvector matrix at a[j * d + i].
    for (std::int64_t i = 0; i < d; ++i)
      for (std::int64_t j = 0; j < d; ++j)
        r.vectors[static_cast<size_t>(i * d + j)] = host[b * dd + static_cast<size_t>(j * d + i)];
    canonicalize_eig(r, d);
  }
  if (used) *used = solver.method();
  return out;
}

}  // namespace kvcal
