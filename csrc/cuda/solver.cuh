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
// torch's linalg_eigh. A batch Jacobi does not converge on (or whose calls fail) is
// redone with the general solver; an XsyevBatched call (chunk) with a non-success status
// or a non-zero info is redone with torch's linalg_eigh, and only a failure of that raises.
std::tuple<at::Tensor, at::Tensor> batched_symmetric_eigen(const at::Tensor& gram, bool vectors);

// Test hook: pins the solver for later calls in this process (kAuto restores the
// size-based choice) and returns the previous setting.
EigenSolver set_eigen_solver(EigenSolver solver);

// Test hook: while on, every batched cuSOLVER call is treated as failed (a Jacobi batch
// goes to the general solver, every XsyevBatched chunk to torch.linalg.eigh), so that
// the fallback paths run on a GPU where cuSOLVER never fails. Returns the previous setting.
bool inject_eigen_failure(bool on);

// Whether this build has cusolverDnXsyevBatched.
bool have_batched_syev();

}  // namespace dse::cuda
