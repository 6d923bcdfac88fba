// Which batched symmetric eigensolver the CUDA backend uses for a batch of n x n
// matrices. Plain host code (no CUDA), so the CPU test suite covers the choice.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace dse {

enum class EigenSolver : int {
  kAuto = 0,     // choose by size (below)
  kJacobi = 1,   // cusolverDn<t>syevjBatched: one kernel for the whole batch, n <= 32 only
  kBatched = 2,  // cusolverDnXsyevBatched: batched QR-type solver, any n (newer cuSOLVER only)
  kTorch = 3,    // at::linalg_eigh: torch's own dispatch (cuSOLVER/MAGMA), always available
};

// Largest n cusolverDn<t>syevjBatched accepts.
constexpr int64_t kJacobiBatchedMaxN = 32;

// The solver for matrices of any size: XsyevBatched where this cuSOLVER has it.
inline EigenSolver general_eigen_solver(bool have_batched) {
  return have_batched ? EigenSolver::kBatched : EigenSolver::kTorch;
}

// The solver for a batch of n x n matrices. `requested` is kAuto unless a caller
// (a test) pinned one; `have_batched` says whether this build's cuSOLVER has
// cusolverDnXsyevBatched. Auto: Jacobi for n <= 32 (small matrices converge in
// a few sweeps, all in one launch), else XsyevBatched, else torch's linalg_eigh.
// A pinned solver that cannot take the batch falls back the same way.
inline EigenSolver choose_eigen_solver(int64_t n, EigenSolver requested, bool have_batched) {
  if (requested == EigenSolver::kTorch) return EigenSolver::kTorch;
  if (requested == EigenSolver::kBatched) return general_eigen_solver(have_batched);
  if (n <= kJacobiBatchedMaxN) return EigenSolver::kJacobi;
  return general_eigen_solver(have_batched);
}

inline const char* eigen_solver_name(EigenSolver s) {
  switch (s) {
    case EigenSolver::kAuto: return "auto";
    case EigenSolver::kJacobi: return "jacobi";
    case EigenSolver::kBatched: return "batched";
    case EigenSolver::kTorch: return "torch";
  }
  return "?";
}

inline EigenSolver eigen_solver_from_name(const std::string& name) {
  for (EigenSolver s : {EigenSolver::kAuto, EigenSolver::kJacobi, EigenSolver::kBatched, EigenSolver::kTorch}) {
    if (name == eigen_solver_name(s)) return s;
  }
  throw std::invalid_argument("unknown eigensolver '" + name + "' (expected auto, jacobi, batched or torch)");
}

}  // namespace dse
