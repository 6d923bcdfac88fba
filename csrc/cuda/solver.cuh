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

// Deferred status, for callers that must not synchronise (a training step): while a flag is
// set for this thread, batched_symmetric_eigen on `device` does not read the solvers'
// statuses on the host. A matrix whose status is not success (XsyevBatched info, or a Jacobi
// matrix that did not converge) sets *flag (an int32 in device memory) to 1 on the device,
// and its results are not usable; a call that fails outright (a status known on the host)
// is still redone at once. The caller reads the flag later, with its other checks, and
// recomputes with the status read (flag nullptr) when it is set. nullptr ends deferral.
void defer_eigen_status(int32_t* flag, int device);

// Whether this build has cusolverDnXsyevBatched.
bool have_batched_syev();

}  // namespace dse::cuda
