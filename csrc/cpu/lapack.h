// The few BLAS / LAPACK calls the CPU kernels make on small per-problem blocks,
// inside their own parallel loops (so the library runs single-threaded there).
//
// When torch's BLAS/LAPACK symbols are linkable (DSE_HAVE_LAPACK, detected by
// CMake) they are called directly: going through ATen costs several
// microseconds per call, which adds up over thousands of tiny blocks.
// Otherwise the same operations run through ATen.
#pragma once
#include <cstdint>
#include <vector>

namespace dse::cpu {

// Row-major C (m x n, leading dimension ldc) = A (m x kk, lda) * B^T, B (n x kk, ldb).
void gemm_abt(int64_t m, int64_t n, int64_t kk, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
              int64_t ldc);
void gemm_abt(int64_t m, int64_t n, int64_t kk, const double* a, int64_t lda, const double* b, int64_t ldb, double* c,
              int64_t ldc);

// Eigenvalues of dense symmetric float64 matrices, one at a time (LAPACK dsyevd,
// eigenvalues only, with a workspace reused across calls).
class SymmetricEigenvalues {
 public:
  // Ascending eigenvalues of the leading n x n block of the column-major (or,
  // equivalently, row-major: the matrix is symmetric) matrix `a` with leading
  // dimension lda >= n, written to w[0..n). Only the lower triangle is read;
  // `a` is overwritten. Not thread-safe: use one instance per thread.
  void operator()(double* a, int64_t n, int64_t lda, double* w);

 private:
  std::vector<double> work_;
  std::vector<int> iwork_;
  int64_t work_n_ = -1;  // matrix order the workspace was sized for
};

// True when the direct BLAS/LAPACK path is compiled in.
bool uses_direct_lapack();

}  // namespace dse::cpu
