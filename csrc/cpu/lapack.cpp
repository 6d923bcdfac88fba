#include "cpu/lapack.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#ifdef DSE_HAVE_LAPACK
extern "C" {
// Fortran BLAS; the trailing arguments are the hidden lengths of the character arguments.
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc,
            std::size_t, std::size_t);
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc, std::size_t, std::size_t);
void dsyevd_(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w, double* work,
             const int* lwork, int* iwork, const int* liwork, int* info, std::size_t, std::size_t);
}
#endif

namespace dse::cpu {
namespace {

// Row-major C (m x n, ldc) = A * B^T with A (m x kk, lda), B (n x kk, ldb); or, with
// a_transposed, C = A^T * B with A (kk x m, lda), B (kk x n, ldb). accumulate: C += instead.
template <typename T>
void gemm_impl(bool a_transposed, int64_t m, int64_t n, int64_t kk, const T* a, int64_t lda, const T* b, int64_t ldb,
               T* c, int64_t ldc, bool accumulate = false) {
  if (m == 0 || n == 0) return;
#ifdef DSE_HAVE_LAPACK
  TORCH_CHECK(std::max({m, n, kk, lda, ldb, ldc}) <= INT32_MAX, "gemm: block too large for BLAS");
  // Column-major view: C^T (n x m) = op(B) (n x kk) * op(A) (kk x m), each buffer read as the
  // transpose of its row-major matrix.
  const char* tb = a_transposed ? "N" : "T";
  const char* ta = a_transposed ? "T" : "N";
  const int mi = static_cast<int>(n), ni = static_cast<int>(m), ki = static_cast<int>(kk);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  const T one = 1, beta = accumulate ? 1 : 0;
  if constexpr (std::is_same_v<T, float>)
    sgemm_(tb, ta, &mi, &ni, &ki, &one, b, &la, a, &lb, &beta, c, &lc, 1, 1);
  else
    dgemm_(tb, ta, &mi, &ni, &ki, &one, b, &la, a, &lb, &beta, c, &lc, 1, 1);
#else
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor ta = a_transposed ? at::from_blob(const_cast<T*>(a), {kk, m}, {lda, 1}, opts).t()
                                     : at::from_blob(const_cast<T*>(a), {m, kk}, {lda, 1}, opts);
  const at::Tensor tb = a_transposed ? at::from_blob(const_cast<T*>(b), {kk, n}, {ldb, 1}, opts)
                                     : at::from_blob(const_cast<T*>(b), {n, kk}, {ldb, 1}, opts).t();
  at::Tensor tc = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  if (accumulate)
    tc.addmm_(ta, tb);
  else
    at::mm_out(tc, ta, tb);
#endif
}

// Column blocks of the triangle Gram (gram_upper): 4 blocks at side 384, which the products
// still run at full GEMM speed.
constexpr int64_t kTriangleBlock = 96;

}  // namespace

namespace {
void gram_upper_impl(bool wide, const double* z, int64_t rows, int64_t cols, double* g, int64_t ldg, bool accumulate) {
  const int64_t side = wide ? rows : cols, inner = wide ? cols : rows;
  const int64_t blocks = side < 2 * kTriangleBlock ? 1 : (side + kTriangleBlock - 1) / kTriangleBlock;
  const int64_t width = (side + blocks - 1) / blocks;
  for (int64_t j0 = 0; j0 < side; j0 += width) {
    const int64_t j1 = std::min(side, j0 + width);  // G[0:j1, j0:j1]: block column j, down to the diagonal
    if (wide)
      gemm_impl(false, j1, j1 - j0, inner, z, cols, z + j0 * cols, cols, g + j0, ldg, accumulate);
    else
      gemm_impl(true, j1, j1 - j0, inner, z, cols, z + j0, cols, g + j0, ldg, accumulate);
  }
}
}  // namespace

void gram_upper(const double* z, int64_t rows, int64_t cols, double* g, int64_t ldg) {
  gram_upper_impl(rows <= cols, z, rows, cols, g, ldg, false);
}

void column_gram_upper(const double* z, int64_t rows, int64_t cols, double* g, int64_t ldg, bool accumulate) {
  gram_upper_impl(false, z, rows, cols, g, ldg, accumulate);
}

void gemm_abt(int64_t m, int64_t n, int64_t kk, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
              int64_t ldc) {
  gemm_impl(false, m, n, kk, a, lda, b, ldb, c, ldc);
}

void gemm_abt(int64_t m, int64_t n, int64_t kk, const double* a, int64_t lda, const double* b, int64_t ldb, double* c,
              int64_t ldc) {
  gemm_impl(false, m, n, kk, a, lda, b, ldb, c, ldc);
}

void gemm_atb(int64_t m, int64_t n, int64_t kk, const double* a, int64_t lda, const double* b, int64_t ldb, double* c,
              int64_t ldc) {
  gemm_impl(true, m, n, kk, a, lda, b, ldb, c, ldc);
}

void gemm_ab(int64_t m, int64_t n, int64_t kk, const double* a, int64_t lda, const double* b, int64_t ldb, double* c,
             int64_t ldc) {
  if (m == 0 || n == 0) return;
#ifdef DSE_HAVE_LAPACK
  TORCH_CHECK(std::max({m, n, kk, lda, ldb, ldc}) <= INT32_MAX, "gemm: block too large for BLAS");
  // Column-major view: C^T (n x m) = B^T (n x kk) * A^T (kk x m), each buffer read as the
  // transpose of its row-major matrix, so no transposition is asked for.
  const int mi = static_cast<int>(n), ni = static_cast<int>(m), ki = static_cast<int>(kk);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  const double one = 1, zero = 0;
  dgemm_("N", "N", &mi, &ni, &ki, &one, b, &la, a, &lb, &zero, c, &lc, 1, 1);
#else
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  at::Tensor tc = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  at::mm_out(tc, at::from_blob(const_cast<double*>(a), {m, kk}, {lda, 1}, opts),
             at::from_blob(const_cast<double*>(b), {kk, n}, {ldb, 1}, opts));
#endif
}

void SymmetricEigen::solve(double* a, int64_t n, int64_t lda, double* w, bool vectors) {
  TORCH_CHECK(n >= 0 && lda >= std::max<int64_t>(n, 1), "SymmetricEigen: bad sizes n = ", n, ", lda = ", lda);
  if (n == 0) return;
#ifdef DSE_HAVE_LAPACK
  TORCH_CHECK(lda <= INT32_MAX, "SymmetricEigen: matrix too large for LAPACK");
  // LAPACK reads the row-major buffer as column-major: its lower triangle is our upper one.
  const char jobz = vectors ? 'V' : 'N', uplo = 'L';
  const int ni = static_cast<int>(n), ldai = static_cast<int>(lda);
  int info = 0;
  if (work_n_ != n || work_vectors_ != vectors) {  // workspace query, once per order and job
    double work_size = 0.0;
    int iwork_size = 0;
    const int query = -1;
    dsyevd_(&jobz, &uplo, &ni, a, &ldai, w, &work_size, &query, &iwork_size, &query, &info, 1, 1);
    TORCH_CHECK(info == 0, "dsyevd workspace query failed with info = ", info);
    work_.resize(std::max<std::size_t>(static_cast<std::size_t>(work_size), 2 * n + 1));
    iwork_.resize(std::max(iwork_size, 1));
    work_n_ = n;
    work_vectors_ = vectors;
  }
  const int lwork = static_cast<int>(work_.size()), liwork = static_cast<int>(iwork_.size());
  dsyevd_(&jobz, &uplo, &ni, a, &ldai, w, work_.data(), &lwork, iwork_.data(), &liwork, &info, 1, 1);
  TORCH_CHECK(info == 0, "dsyevd failed to converge (info = ", info, ") on a ", n, " x ", n, " Gram matrix");
  // Eigenvector i is column i of the column-major result: row i of our buffer.
#else
  const at::Tensor block = at::from_blob(a, {n, n}, {lda, 1}, at::TensorOptions().dtype(at::kDouble));
  if (vectors) {
    const auto [eig, vec] = at::linalg_eigh(block, "U");
    std::memcpy(w, eig.contiguous().const_data_ptr<double>(), n * sizeof(double));
    block.copy_(vec.t());  // row i = eigenvector i
  } else {
    const at::Tensor eig = at::linalg_eigvalsh(block, "U").contiguous();
    std::memcpy(w, eig.const_data_ptr<double>(), n * sizeof(double));
  }
#endif
}

bool uses_direct_lapack() {
#ifdef DSE_HAVE_LAPACK
  return true;
#else
  return false;
#endif
}

}  // namespace dse::cpu
