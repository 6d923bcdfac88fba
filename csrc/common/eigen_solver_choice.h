// Which batched symmetric eigensolver the CUDA backend uses for a batch of n x n
// matrices, how a batch is cut into calls, and which calls are redone by the
// fallback. Plain host code (no CUDA), so the CPU test suite covers it.
#pragma once
#include <algorithm>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

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

// ---------------------------------------------------------------- batches and fallback
// Known limits of the cuSOLVER batched eigensolvers (syevjBatched, XsyevBatched) per
// call: at most 65535 matrices, and n * lda * batch <= INT32_MAX (their internal
// offsets are 32-bit).
constexpr int64_t kMaxMatricesPerCall = 65535;
constexpr int64_t kMaxEntriesPerCall = INT32_MAX;

// The most n x n matrices (leading dimension lda) one call may take; 0 when even one
// matrix is over the limit (the batch then goes to torch's solver).
inline int64_t eigen_batch_limit(int64_t n, int64_t lda) {
  const int64_t per_matrix = std::max<int64_t>(1, n) * std::max<int64_t>(1, lda);
  return std::min(kMaxMatricesPerCall, kMaxEntriesPerCall / per_matrix);
}

// A run of consecutive matrices [start, start + count) solved by one call.
struct EigenChunk {
  int64_t start, count;
};

// A batch of B matrices cut into calls within the limits, in order (empty when B <= 0
// or when one matrix is over the limit).
inline std::vector<EigenChunk> eigen_batch_chunks(int64_t B, int64_t n, int64_t lda) {
  std::vector<EigenChunk> chunks;
  const int64_t limit = eigen_batch_limit(n, lda);
  if (limit <= 0) return chunks;
  for (int64_t start = 0; start < B; start += limit) chunks.push_back({start, std::min(limit, B - start)});
  return chunks;
}

// The chunks to redo with the fallback solver (torch.linalg.eigh): those whose call
// returned a non-success status (call_failed[c]) and those with a non-zero info for
// any of their matrices (info: the B statuses the solver wrote, on the host).
inline std::vector<size_t> eigen_chunks_to_redo(const std::vector<EigenChunk>& chunks,
                                                const std::vector<char>& call_failed, const int* info) {
  std::vector<size_t> redo;
  for (size_t c = 0; c < chunks.size(); ++c) {
    bool bad = c < call_failed.size() && call_failed[c];
    for (int64_t i = chunks[c].start; !bad && i < chunks[c].start + chunks[c].count; ++i) bad = info[i] != 0;
    if (bad) redo.push_back(c);
  }
  return redo;
}

}  // namespace dse
