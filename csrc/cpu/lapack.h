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

// The upper triangle (row-major, diagonal included) of the Gram of a row-major
// (rows x cols) float64 matrix z: G = z z^T (side = rows) when rows <= cols, else
// G = z^T z (side = cols), into g (side x side, leading dimension ldg >= side).
// Entries below the diagonal are left as they were, or hold their mirror image
// (small Grams are one full product). Large Grams are built one column block at
// a time, each block only down to the diagonal: about 1.3x the FLOPs of one
// triangle instead of the 2x of the full product.
void gram_upper(const double* z, int64_t rows, int64_t cols, double* g, int64_t ldg);

// The same for G = z^T z (side = cols) whatever the shape of z; accumulate: g += z^T z
// (the same entries are written).
void column_gram_upper(const double* z, int64_t rows, int64_t cols, double* g, int64_t ldg, bool accumulate);

// Row-major C (m x n, ldc) = A^T * B with A (kk x m, lda), B (kk x n, ldb), float64.
void gemm_atb(int64_t m, int64_t n, int64_t kk, const double* a, int64_t lda, const double* b, int64_t ldb, double* c,
              int64_t ldc);

// Row-major C (m x n, ldc) = A (m x kk, lda) * B (kk x n, ldb), float64.
void gemm_ab(int64_t m, int64_t n, int64_t kk, const double* a, int64_t lda, const double* b, int64_t ldb, double* c,
             int64_t ldc);

// Eigen-decomposition of dense symmetric float64 matrices, one at a time (LAPACK
// dsyevd, with a workspace reused across calls). Not thread-safe: one per thread.
class SymmetricEigen {
 public:
  // Ascending eigenvalues of the leading n x n block of the row-major symmetric
  // matrix `a` (leading dimension lda >= n) in w[0..n). Only the upper triangle
  // of `a` is read (a full symmetric matrix is fine); `a` is overwritten.
  void values(double* a, int64_t n, int64_t lda, double* w) { solve(a, n, lda, w, false); }
  // The same, and row i of `a` (a[i * lda .. i * lda + n)) becomes the unit
  // eigenvector of w[i].
  void vectors(double* a, int64_t n, int64_t lda, double* w) { solve(a, n, lda, w, true); }

 private:
  void solve(double* a, int64_t n, int64_t lda, double* w, bool vectors);
  std::vector<double> work_;
  std::vector<int> iwork_;
  int64_t work_n_ = -1;  // matrix order and job the workspace was sized for
  bool work_vectors_ = false;
};

// True when the direct BLAS/LAPACK path is compiled in.
bool uses_direct_lapack();

}  // namespace dse::cpu
