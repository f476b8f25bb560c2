// Symmetric eigendecomposition of covariance matrices, one or many at a time.
//
// Convention for every result (CPU and GPU alike): eigenvalues sorted descending; eigenvectors as
// the COLUMNS of a row-major [d, d] matrix (vectors[i * d + j] = component i of eigenvector j);
// deterministic sign: the largest-|.| component of each eigenvector is positive (ties: the lowest
// index), so two solvers agree on the basis, not only on the subspace.
//
// CPU: Eigen SelfAdjointEigenSolver in double. GPU: cuSOLVER cusolverDnXsyevBatched (CUDA 13) in
// fp64, falling back to syevjBatched when the batched syev is unavailable; fp64 because fit-pca's
// eigensolve is milliseconds either way and fp32 loses the small end of the spectrum (its
// eigenvalues are only accurate to ~1e-7 of the largest one).
//
//   std::vector<kvcal::eig_result> r = kvcal::eigh_batched(covs, d, kvcal::eig_device::automatic);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvcal {

struct eig_result {
  std::vector<double> values;   // [d], descending
  std::vector<double> vectors;  // [d, d] row-major, column j = eigenvector j
};

enum class eig_device { cpu, cuda, automatic };

// One [d, d] row-major symmetric matrix, Eigen in double.
eig_result eigh_cpu(const double* a, std::int64_t d);

// Sorts descending and fixes signs (the convention above). `vectors` column j pairs values[j].
void canonicalize_eig(eig_result& r, std::int64_t d);

// Every matrix of `mats` ([d, d] row-major each). automatic = cuda when a device is present;
// cuda without a device falls back to the CPU with a warning. *used (optional) names the solver.
std::vector<eig_result> eigh_batched(const std::vector<std::vector<double>>& mats, std::int64_t d,
                                     eig_device dev, std::string* used = nullptr);

// GPU batch (calibrate/eigensolve_gpu.cu); throws without CUDA. *used names the cuSOLVER routine.
std::vector<eig_result> eigh_batched_gpu(const std::vector<std::vector<double>>& mats,
                                         std::int64_t d, std::string* used = nullptr);

// Plan/run split for benchmarks: workspace sized once, run() on device memory only.
// a: device [batch, d, d] (overwritten with eigenvectors, column-major), w: device [batch, d]
// (ascending). fp64 = false solves in fp32 (a, w are float then).
class gpu_eigensolver {
 public:
  gpu_eigensolver(std::int64_t batch, std::int64_t d, bool fp64, bool use_syevj = false);
  ~gpu_eigensolver();
  gpu_eigensolver(const gpu_eigensolver&) = delete;
  gpu_eigensolver& operator=(const gpu_eigensolver&) = delete;
  void run(void* a, void* w);  // synchronous; checks info
  const std::string& method() const;
  struct impl;

 private:
  impl* p_;
};

}  // namespace kvcal
