#include "calibrate/eigensolve.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/common/cuda_device.h"
#include "kernels/common/error.h"
#include "kernels/common/log.h"

namespace kvcal {

using mat_rm = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

void canonicalize_eig(eig_result& r, std::int64_t d) {
  const size_t n = static_cast<size_t>(d);
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return r.values[a] > r.values[b]; });
  eig_result s;
  s.values.resize(n);
  s.vectors.resize(n * n);
  for (size_t j = 0; j < n; ++j) {
    const size_t src = order[j];
    s.values[j] = r.values[src];
    size_t arg = 0;
    double best = -1;
    for (size_t i = 0; i < n; ++i) {
      const double a = std::abs(r.vectors[i * n + src]);
      if (a > best * (1 + 1e-12) + 1e-300) {  // ties keep the lowest index
        best = a;
        arg = i;
      }
    }
    const double sign = r.vectors[arg * n + src] < 0 ? -1.0 : 1.0;
    for (size_t i = 0; i < n; ++i) s.vectors[i * n + j] = sign * r.vectors[i * n + src];
  }
  r = std::move(s);
}

eig_result eigh_cpu(const double* a, std::int64_t d) {
  const mat_rm m = Eigen::Map<const mat_rm>(a, d, d);
  Eigen::SelfAdjointEigenSolver<mat_rm> es(m, Eigen::ComputeEigenvectors);
  KVCAL_CHECK(es.info() == Eigen::Success, "eigensolve: Eigen did not converge (d = ", d, ")");
  eig_result r;
  r.values.assign(es.eigenvalues().data(), es.eigenvalues().data() + d);
  const mat_rm v = es.eigenvectors();
  r.vectors.assign(v.data(), v.data() + d * d);
  canonicalize_eig(r, d);
  return r;
}

std::vector<eig_result> eigh_batched(const std::vector<std::vector<double>>& mats, std::int64_t d,
                                     eig_device dev, std::string* used) {
  for (const auto& m : mats)
    KVCAL_CHECK(static_cast<std::int64_t>(m.size()) == d * d, "eigensolve: matrix is not ", d, "x",
                d);
  for (const auto& m : mats)
    for (double v : m) KVCAL_CHECK(std::isfinite(v), "eigensolve: matrix has NaN/Inf entries");
  if (dev != eig_device::cpu && !mats.empty()) {
    if (cuda_device_count() > 0) return eigh_batched_gpu(mats, d, used);
    if (dev == eig_device::cuda)
      log_warn("eigensolve: no CUDA device (", cuda_device_summary(), "); using the CPU");
  }
  std::vector<eig_result> out;
  out.reserve(mats.size());
  for (const auto& m : mats) out.push_back(eigh_cpu(m.data(), d));
  if (used) *used = "Eigen SelfAdjointEigenSolver (fp64, CPU)";
  return out;
}

}  // namespace kvcal

#ifndef KVCAL_WITH_CUDA
namespace kvcal {
struct gpu_eigensolver::impl {
  std::string method;
};
std::vector<eig_result> eigh_batched_gpu(const std::vector<std::vector<double>>&, std::int64_t,
                                         std::string*) {
  KVCAL_FAIL("GPU eigensolve: this build has no CUDA");
}
gpu_eigensolver::gpu_eigensolver(std::int64_t, std::int64_t, bool, bool) : p_(nullptr) {
  KVCAL_FAIL("GPU eigensolve: this build has no CUDA");
}
gpu_eigensolver::~gpu_eigensolver() = default;
void gpu_eigensolver::run(void*, void*) {}
const std::string& gpu_eigensolver::method() const {
  return p_->method;
}
}  // namespace kvcal
#endif
