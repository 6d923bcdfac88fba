// Eigenvalues of the Gram matrices of many small float64 matrices: the workhorse of
// the CPU forward kernels of cluster_css and effective_rank (without keep_basis).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace dse::cpu {

// fill(i, dst, stride) writes entry (r, t) of matrix i (r < rows[i]) to dst[(r * d + t) * stride].
using GramFill = std::function<void(int64_t, double*, int64_t)>;
// reduce(i, eig, m) receives the m = min(rows[i], d) eigenvalues of matrix i's Gram matrix, ascending.
using GramReduce = std::function<void(int64_t, const double*, int64_t)>;

// Eigenvalues of the smaller Gram matrix (Z Z^T or Z^T Z) of each (rows[i], d) matrix,
// in float64; matrices with rows[i] < 1 are skipped. Matrices no taller than wide go
// kLanes at a time through the interleaved Gram product and eigensolver
// (cpu/interleaved.h); taller ones, a lone matrix and any matrix whose interleaved QL
// iteration does not converge go through BLAS and LAPACK (cpu/lapack.h). Runs on all
// threads, costliest work first; fill and reduce are called concurrently for
// different i.
void gram_spectra(const std::vector<int64_t>& rows, int64_t d, const GramFill& fill, const GramReduce& reduce);

// Eigenvalues (ascending) of the smaller Gram matrix of a float64 (n, d) matrix:
// A A^T when n <= d, else A^T A. Exposed for the tests.
at::Tensor gram_eigenvalues(const at::Tensor& a);

}  // namespace dse::cpu
