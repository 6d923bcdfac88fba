// Batched symmetric eigensolver on the GPU (cuSOLVER), with our own handle per
// device and thread (torch's handle pool lives in a library extensions do not link).
#pragma once
#include <ATen/ATen.h>

#include "common/eigen_solver_choice.h"

namespace dse::cuda {

// Eigen-decomposition of a batch of symmetric float64 matrices gram (B, n, n) on
// a CUDA device (read as full symmetric matrices). Returns the ascending
// eigenvalues (B, n) and, when `vectors`, the eigenvectors (B, n, n) with row i
// of each matrix the unit eigenvector of eigenvalue i (else an empty tensor).
// The solver is chosen by size (common/eigen_solver_choice.h): batched Jacobi
// for n <= 32, cusolverDnXsyevBatched above when this cuSOLVER has it, else
// torch's linalg_eigh. A batch Jacobi does not converge on is redone with the
// next solver; a non-zero info from the last one raises.
std::tuple<at::Tensor, at::Tensor> batched_symmetric_eigen(const at::Tensor& gram, bool vectors);

// Test hook: pins the solver for later calls in this process (kAuto restores the
// size-based choice) and returns the previous setting.
EigenSolver set_eigen_solver(EigenSolver solver);

// Whether this build has cusolverDnXsyevBatched.
bool have_batched_syev();

}  // namespace dse::cuda
