// Gram matrices and their eigenvalues (and eigenvectors) for many small float64 matrices,
// several at a time.
//
// The DSE kernels solve hundreds of ~64 x 384 Gram eigenproblems per call. For
// matrices this small a BLAS GEMM cannot use the symmetry of Z Z^T, LAPACK's
// dsytrd is bound by level-2 memory traffic and its QL iteration by the latency
// of each rotation, so one matrix at a time uses a core poorly. Here kLanes
// matrices are interleaved entry by entry (entry (i, j) of lane l at
// ((i * cols) + j) * kLanes + l) and every step of the Gram product, of the
// Householder tridiagonalization and of the implicit QL iteration runs on all
// lanes in one SIMD instruction. Lanes whose QL sweep is shorter or already
// converged are masked, so each lane computes exactly what a one-matrix
// implementation would. The eigenvectors serve the backward kernels, which need
// the whole eigenbasis of each small Gram matrix (LAPACK's dsyevd takes ~0.3 ms
// for one 65 x 65 matrix with vectors).
//
// On x86-64 CPUs with AVX2 and FMA an AVX2 build of the same code is selected
// at run time; elsewhere the portable build runs.
#pragma once
#include <cstdint>
#include <string>

namespace dse::cpu {

inline constexpr int64_t kLanes = 4;

// Rows are processed in blocks of this many: interleaved_gram's n must be a multiple.
inline constexpr int64_t kGramBlock = 3;

// g (n x n, lower triangle) = Z Z^T for kLanes interleaved (n x d) matrices z.
// n must be a multiple of kGramBlock (pad with zero rows). The strict upper
// triangle of g is not written.
void interleaved_gram(const double* z, int64_t n, int64_t d, double* g);

// Scratch doubles needed by interleaved_eigenvalues for order n.
inline int64_t interleaved_eigen_workspace(int64_t n) { return (4 * n + 2) * kLanes; }

// a: kLanes interleaved symmetric n x n matrices (the lower triangle is read,
// `a` is overwritten). On return eig[i * kLanes + l] holds lane l's i-th
// eigenvalue in ascending order. Returns a bit mask of the lanes whose QL
// iteration did not converge (their eig entries are unspecified): 0 on success.
int interleaved_eigenvalues(double* a, int64_t n, double* eig, double* work);

// Scratch doubles needed by interleaved_eigenvectors for order n.
inline int64_t interleaved_vectors_workspace(int64_t n) { return (n * n + 8 * n) * kLanes; }

// As interleaved_eigenvalues, with eigenvectors (EISPACK's tql2 after the same
// reduction, then the reflectors applied back). For each lane q with eig[q] not
// null whose iteration converged: eig[q][0..n) its eigenvalues in ascending order
// and row i of vec[q] (leading dimension ldv >= n) the unit eigenvector of
// eig[q][i]. Lanes with a null eig[q] are computed and dropped (padding). Returns
// the bit mask of lanes that did not converge (their outputs are not written).
int interleaved_eigenvectors(double* a, int64_t n, double* const* eig, double* const* vec, int64_t ldv,
                             double* work);

// Which implementation interleaved_gram and interleaved_eigenvalues run: "avx2" or "portable".
const char* interleaved_isa();

// For tests. Run `isa` ("portable" or "avx2") from now on; false when this CPU or build lacks it.
bool select_interleaved_isa(const std::string& isa);
// For tests. QL sweeps allowed per eigenvalue before a lane is reported failed; returns the old value.
inline constexpr int kDefaultMaxSweeps = 60;
int set_interleaved_max_sweeps(int sweeps);

}  // namespace dse::cpu
