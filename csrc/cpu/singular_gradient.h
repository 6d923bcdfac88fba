// Gram eigenbases and gradients through singular values, for the CPU kernels of
// cluster_css and effective_rank (their keep_basis forwards and their backwards).
//
// For a matrix Z = U diag(sigma) V^T and a loss with dL/dsigma_i = h_i, the
// gradient is dL/dZ = U diag(h) V^T. Through the smaller Gram matrix:
//   rows <= cols: G = Z Z^T = U diag(sigma^2) U^T,  dL/dZ = U diag(h / sigma) U^T Z
//   rows >  cols: G = Z^T Z = V diag(sigma^2) V^T,  dL/dZ = Z V diag(h / sigma) V^T
// Singular values under the noise floor (common/spectrum.h) count as exact zeros
// and get no gradient: the subgradient of the nuclear norm that is 0 on the null
// space, and the only finite choice for the entropy of the effective rank.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "cpu/lapack.h"

namespace dse::cpu {

// dsigma(sigma, m, h): h[i] = dL/dsigma_i for the m ascending singular values (zeros included).
using SigmaGradient = std::function<void(const double*, int64_t, double*)>;

// A float64 buffer of n entries left uninitialized (std::vector would zero it first: for the
// regularizer's pooled 12 544 x 384 matrix that is 38 MB written for nothing, twice a backward).
inline std::unique_ptr<double[]> uninitialized_doubles(int64_t n) {
  return std::unique_ptr<double[]>(new double[static_cast<size_t>(n)]);
}

// Per-thread scratch of the routines below.
struct Scratch {
  std::vector<double> gram, eig, sigma, h, weighted, w;
  std::vector<double> lanes;  // the interleaved groups of a backward kernel (cpu/interleaved.h)
  SymmetricEigen eigen;
};

// Eigen-decomposition of the smaller Gram matrix of z (rows x cols, row-major):
// side = min(rows, cols) eigenvalues to eig (ascending) and eigenvectors to the rows
// of vec (row i at vec + i * ldv). vec also receives the Gram matrix first. Returns side.
int64_t gram_basis(const double* z, int64_t rows, int64_t cols, double* eig, double* vec, int64_t ldv,
                   SymmetricEigen& eigen);

// Tall matrices (rows > cols) read kStreamRows rows at a time: converted to float64
// block by block into a small buffer that stays in cache, instead of one float64
// copy of the whole matrix (the regularizer's pooled 12 544 x 384 tokens: 38 MB of
// fresh pages and several passes over memory per call). Block boundaries and the
// order of every sum are fixed by the sizes, not by the number of threads.
inline constexpr int64_t kStreamRows = 256;
inline bool streamed(int64_t rows, int64_t cols) { return rows > cols && rows > kStreamRows; }

// fill(r0, r1, dst): rows [r0, r1) of the matrix in float64, row-major (r1 - r0) x cols.
using RowBlockFill = std::function<void(int64_t, int64_t, double*)>;
// store(r0, r1, src): receives rows [r0, r1) of a result, row-major (r1 - r0) x cols.
using RowBlockStore = std::function<void(int64_t, int64_t, const double*)>;

// The upper triangle of Z^T Z (cols x cols, leading dimension ldg) of a tall (rows x cols)
// matrix read through fill; blocks go to up to kStreamSlabs partial sums in parallel,
// added in order.
void streamed_gram(int64_t rows, int64_t cols, const RowBlockFill& fill, double* g, int64_t ldg);

// Y = Z W for a tall (rows x cols) Z read through fill and W (cols x cols, leading
// dimension ldw); blocks of rows in parallel, each handed to store.
void streamed_product(int64_t rows, int64_t cols, const RowBlockFill& fill, const double* w, int64_t ldw,
                      const RowBlockStore& store);

// W (side x side, in s.w) = E^T diag(h / sigma) E, E's rows the eigenvectors of a
// Gram decomposition (eig, vec with leading dimension ldv), h = dsigma(sigma):
// dL/dZ = W Z for a wide Z (side = rows), Z W for a tall one (side = cols).
const double* gradient_weights(const double* eig, const double* vec, int64_t ldv, int64_t side,
                               const SigmaGradient& dsigma, Scratch& s, double min_floor);

// y (rows x cols) = dL/dZ for z, from z's Gram eigen-decomposition (gram_basis).
// min_floor: an absolute Gram eigenvalue floor (gram_noise_floor).
void apply_singular_gradient(const double* z, int64_t rows, int64_t cols, const double* eig, const double* vec,
                             int64_t ldv, const SigmaGradient& dsigma, double* y, Scratch& s, double min_floor);

// The same, decomposing z's Gram matrix first.
void singular_gradient(const double* z, int64_t rows, int64_t cols, const SigmaGradient& dsigma, double* y,
                       Scratch& s, double min_floor = 0.0);

// Runs task(id, scratch) for every id in ids (in that order of priority: put the
// costliest first) on all threads, each thread taking the next id as it frees up.
void for_each_matrix(const std::vector<int64_t>& ids, const std::function<void(int64_t, Scratch&)>& task);

}  // namespace dse::cpu
