#include "cuda/solver.cuh"

#include <cusolverDn.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <string>
#include <vector>

#include "cuda/cuda_utils.cuh"

// Batched symmetric eigensolvers on the GPU (cuda/solver.cuh). Which solver takes a
// batch, how it is cut into calls and which calls are redone by the fallback are
// plain host rules in common/eigen_solver_choice.h (tested on the CPU).
//
// Failure handling: a Jacobi batch (n <= 32) that does not converge, or whose cuSOLVER
// calls fail, is redone whole by the general solver. With cusolverDnXsyevBatched,
// every chunk (call) whose status is not success or that reports a non-zero info for
// any of its matrices is redone with torch.linalg.eigh (at::linalg_eigh); only when
// that fails too does the call raise, naming both failures.

namespace dse::cuda {
namespace {

std::atomic<int> pinned_solver{static_cast<int>(EigenSolver::kAuto)};
std::atomic<bool> injected_failure{false};  // test hook: every cuSOLVER batched call "fails"

// Deferred status (see defer_eigen_status in cuda/solver.cuh): the caller's int32 flag on
// `device`, or nullptr. Per thread: a forward runs in its caller's thread.
struct StatusSink {
  int32_t* flag = nullptr;
  int device = -1;
};
thread_local StatusSink status_sink;

// The sink for matrices on `device`, as a 0-dim int32 tensor (undefined when none is set).
at::Tensor sink_for(const c10::Device& device) {
  if (status_sink.flag == nullptr || device.index() != status_sink.device) return {};
  return at::from_blob(status_sink.flag, {}, at::TensorOptions().dtype(at::kInt).device(device));
}

// flag = max(flag, any(info != 0)): on the device, no synchronisation.
void record_failures(at::Tensor& sink, const at::Tensor& info) {
  sink.copy_(at::maximum(sink, info.ne(0).any().to(at::kInt)));
}

// One cuSOLVER handle, parameter object and Jacobi settings per (thread, device),
// created on first use, all or nothing.
struct SolverState {
  cusolverDnHandle_t handle = nullptr;
  cusolverDnParams_t params = nullptr;
  syevjInfo_t jacobi = nullptr;
  void release() {
    if (jacobi != nullptr) cusolverDnDestroySyevjInfo(jacobi);
    if (params != nullptr) cusolverDnDestroyParams(params);
    if (handle != nullptr) cusolverDnDestroy(handle);
    jacobi = nullptr, params = nullptr, handle = nullptr;
  }
  ~SolverState() { release(); }
  // Creates everything; on any failure releases what was made and returns that status.
  cusolverStatus_t create() {
    cusolverStatus_t st = cusolverDnCreate(&handle);
    if (st == CUSOLVER_STATUS_SUCCESS) st = cusolverDnCreateParams(&params);
    if (st == CUSOLVER_STATUS_SUCCESS) st = cusolverDnCreateSyevjInfo(&jacobi);
    // Converge to machine precision (tolerance 0 = eps), eigenvalues ascending.
    if (st == CUSOLVER_STATUS_SUCCESS) st = cusolverDnXsyevjSetTolerance(jacobi, 0.0);
    if (st == CUSOLVER_STATUS_SUCCESS) st = cusolverDnXsyevjSetMaxSweeps(jacobi, 100);
    if (st == CUSOLVER_STATUS_SUCCESS) st = cusolverDnXsyevjSetSortEig(jacobi, 1);
    if (st != CUSOLVER_STATUS_SUCCESS) release();
    return st;
  }
};

// The state of the current device on the current stream, or nullptr (with the status
// in *status) when cuSOLVER cannot be set up: the callers then fall back to torch.
SolverState* solver_for_current_device(cusolverStatus_t* status) {
  thread_local std::map<int, SolverState> states;
  const int device = at::cuda::current_device();
  SolverState& state = states[device];
  *status = CUSOLVER_STATUS_SUCCESS;
  if (state.handle == nullptr) *status = state.create();
  if (*status == CUSOLVER_STATUS_SUCCESS) *status = cusolverDnSetStream(state.handle, at::cuda::getCurrentCUDAStream());
  return *status == CUSOLVER_STATUS_SUCCESS ? &state : nullptr;
}

// Column-major lower = row-major upper; the matrices are symmetric, so either works.
constexpr cublasFillMode_t kUplo = CUBLAS_FILL_MODE_LOWER;

// a (B, n, n) is overwritten with the eigenvectors (cuSOLVER writes eigenvector i
// to column i of the column-major matrix: row i of our row-major one), w (B, n)
// with the eigenvalues, info (B,) with each matrix's status. Returns false when a
// cuSOLVER call failed (the results are then not usable).
bool solve_jacobi(SolverState& s, at::Tensor& a, at::Tensor& w, at::Tensor& info, bool vectors) {
  const int n = static_cast<int>(a.size(1));
  const cusolverEigMode_t jobz = vectors ? CUSOLVER_EIG_MODE_VECTOR : CUSOLVER_EIG_MODE_NOVECTOR;
  const std::vector<EigenChunk> chunks = eigen_batch_chunks(a.size(0), n, n);
  if (chunks.empty() || injected_failure.load()) return false;
  for (const EigenChunk& chunk : chunks) {
    const int count = static_cast<int>(chunk.count);
    double* ap = a.data_ptr<double>() + chunk.start * n * n;
    double* wp = w.data_ptr<double>() + chunk.start * n;
    int lwork = 0;
    if (cusolverDnDsyevjBatched_bufferSize(s.handle, jobz, kUplo, n, ap, n, wp, &lwork, s.jacobi, count) !=
        CUSOLVER_STATUS_SUCCESS)
      return false;
    at::Tensor work = at::empty({std::max(lwork, 1)}, a.options());
    if (cusolverDnDsyevjBatched(s.handle, jobz, kUplo, n, ap, n, wp, work.data_ptr<double>(), lwork,
                                info.data_ptr<int>() + chunk.start, s.jacobi, count) != CUSOLVER_STATUS_SUCCESS)
      return false;
  }
  return true;
}

#ifdef DSE_HAVE_XSYEV_BATCHED
at::Tensor device_bytes_buffer(const at::Tensor& like, int64_t bytes) {
  return at::empty({std::max<int64_t>(bytes, 1)}, like.options().dtype(at::kByte));
}

// Every chunk through cusolverDnXsyevBatched; failed[c] = the status of chunk c's
// calls when not success (0 otherwise).
void solve_batched(SolverState& s, at::Tensor& a, at::Tensor& w, at::Tensor& info, bool vectors,
                   const std::vector<EigenChunk>& chunks, std::vector<int>& failed) {
  const int64_t n = a.size(1);
  const cusolverEigMode_t jobz = vectors ? CUSOLVER_EIG_MODE_VECTOR : CUSOLVER_EIG_MODE_NOVECTOR;
  for (size_t c = 0; c < chunks.size(); ++c) {
    if (injected_failure.load()) {
      failed[c] = static_cast<int>(CUSOLVER_STATUS_INTERNAL_ERROR);
      continue;
    }
    double* ap = a.data_ptr<double>() + chunks[c].start * n * n;
    double* wp = w.data_ptr<double>() + chunks[c].start * n;
    size_t device_bytes = 0, host_bytes = 0;
    cusolverStatus_t st = cusolverDnXsyevBatched_bufferSize(s.handle, s.params, jobz, kUplo, n, CUDA_R_64F, ap, n,
                                                            CUDA_R_64F, wp, CUDA_R_64F, &device_bytes, &host_bytes,
                                                            chunks[c].count);
    if (st == CUSOLVER_STATUS_SUCCESS) {
      at::Tensor device_buffer = device_bytes_buffer(a, static_cast<int64_t>(device_bytes));
      std::vector<char> host_buffer(std::max<size_t>(host_bytes, 1));
      st = cusolverDnXsyevBatched(s.handle, s.params, jobz, kUplo, n, CUDA_R_64F, ap, n, CUDA_R_64F, wp, CUDA_R_64F,
                                  device_buffer.data_ptr(), device_bytes, host_buffer.data(), host_bytes,
                                  info.data_ptr<int>() + chunks[c].start, chunks[c].count);
    }
    if (st != CUSOLVER_STATUS_SUCCESS) failed[c] = static_cast<int>(st);
  }
}
#endif

// torch's own solver on gram (B', n, n): eigenvalues (B', n) and, when `vectors`, the
// eigenvectors as rows (B', n, n). Raises a message naming `context` (which matrices,
// and what failed on them before) when it fails.
std::tuple<at::Tensor, at::Tensor> solve_torch(const at::Tensor& gram, bool vectors, const std::string& context) {
  try {
    if (!vectors) return {at::linalg_eigvalsh(gram), at::empty({0}, gram.options())};
    auto [w, v] = at::linalg_eigh(gram);
    return {w, v.transpose(1, 2).contiguous()};  // columns -> rows
  } catch (const c10::Error& e) {
    C10_THROW_ERROR(Error, "dse: the CUDA eigensolver failed: torch.linalg.eigh raised on " + context + ": " +
                               e.what_without_backtrace());
  }
}

std::string batch_name(int64_t B, int64_t n) {
  return "a batch of " + std::to_string(B) + " symmetric " + std::to_string(n) + " x " + std::to_string(n) +
         " Gram matrices";
}

// The general solver on the whole batch gram_in (B, n, n): XsyevBatched where this
// build has it, chunk by chunk, each failed chunk redone with torch; else torch.
std::tuple<at::Tensor, at::Tensor> solve_general(const at::Tensor& gram_in, bool vectors, const std::string& why) {
  const int64_t B = gram_in.size(0), n = gram_in.size(1);
#ifdef DSE_HAVE_XSYEV_BATCHED
  if (general_eigen_solver(have_batched_syev()) == EigenSolver::kBatched) {
    const std::vector<EigenChunk> chunks = eigen_batch_chunks(B, n, n);
    cusolverStatus_t setup = CUSOLVER_STATUS_SUCCESS;
    SolverState* state = chunks.empty() ? nullptr : solver_for_current_device(&setup);
    if (state != nullptr) {
      at::Tensor a = gram_in.clone(at::MemoryFormat::Contiguous);  // overwritten by the solver
      at::Tensor w = at::empty({B, n}, a.options());
      at::Tensor info = at::zeros({B}, a.options().dtype(at::kInt));
      std::vector<int> failed(chunks.size(), 0);
      solve_batched(*state, a, w, info, vectors, chunks, failed);
      // Redoes chunk c with torch, `cause` naming what cuSOLVER reported.
      auto redo = [&](size_t c, const std::string& cause) {
        const EigenChunk& chunk = chunks[c];
        const std::string context =
            "matrices " + std::to_string(chunk.start) + " to " + std::to_string(chunk.start + chunk.count - 1) +
            " of " + batch_name(B, n) + why + ", after cusolverDnXsyevBatched failed on them (" + cause + ")";
        auto [cw, cv] = solve_torch(gram_in.narrow(0, chunk.start, chunk.count), vectors, context);
        w.narrow(0, chunk.start, chunk.count).copy_(cw);
        if (vectors) a.narrow(0, chunk.start, chunk.count).copy_(cv);
      };
      at::Tensor sink = sink_for(a.device());
      if (sink.defined()) {  // deferred: infos into the caller's flag; failed calls (known here) redone now
        record_failures(sink, info);
        for (size_t c = 0; c < chunks.size(); ++c)
          if (failed[c] != 0) redo(c, "status " + std::to_string(failed[c]));
        return {w, vectors ? a : at::empty({0}, a.options())};
      }
      const at::Tensor host_info = info.cpu();  // one synchronisation per call
      const int* infos = host_info.const_data_ptr<int>();
      std::vector<char> call_failed(failed.size());
      for (size_t c = 0; c < failed.size(); ++c) call_failed[c] = failed[c] != 0;
      for (size_t c : eigen_chunks_to_redo(chunks, call_failed, infos)) {
        int bad_info = 0;
        for (int64_t i = chunks[c].start; i < chunks[c].start + chunks[c].count && bad_info == 0; ++i)
          bad_info = infos[i];
        redo(c, failed[c] != 0 ? "status " + std::to_string(failed[c]) : "info " + std::to_string(bad_info));
      }
      return {w, vectors ? a : at::empty({0}, a.options())};
    }
    return solve_torch(gram_in, vectors,
                       batch_name(B, n) + why +
                           (chunks.empty() ? ", a matrix over cuSOLVER's size limit"
                                           : ", after cuSOLVER could not be set up (status " +
                                                 std::to_string(static_cast<int>(setup)) + ")"));
  }
#endif
  return solve_torch(gram_in, vectors, batch_name(B, n) + why);
}

}  // namespace

EigenSolver set_eigen_solver(EigenSolver solver) {
  return static_cast<EigenSolver>(pinned_solver.exchange(static_cast<int>(solver)));
}

bool inject_eigen_failure(bool on) { return injected_failure.exchange(on); }

void defer_eigen_status(int32_t* flag, int device) { status_sink = {flag, flag == nullptr ? -1 : device}; }

bool have_batched_syev() {
#ifdef DSE_HAVE_XSYEV_BATCHED
  return true;
#else
  return false;
#endif
}

std::tuple<at::Tensor, at::Tensor> batched_symmetric_eigen(const at::Tensor& gram_in, bool vectors) {
  TORCH_CHECK(gram_in.is_cuda() && gram_in.dim() == 3 && gram_in.size(1) == gram_in.size(2) &&
                  gram_in.scalar_type() == at::kDouble,
              "batched_symmetric_eigen expects a (B, n, n) float64 CUDA tensor, got ", gram_in.sizes());
  const c10::cuda::CUDAGuard guard(gram_in.device());
  const int64_t B = gram_in.size(0), n = gram_in.size(1);
  if (B == 0 || n == 0) {
    return {at::empty({B, n}, gram_in.options()), vectors ? at::empty({B, n, n}, gram_in.options())
                                                          : at::empty({0}, gram_in.options())};
  }
  const at::Tensor gram = gram_in.contiguous();
  const EigenSolver solver =
      choose_eigen_solver(n, static_cast<EigenSolver>(pinned_solver.load()), have_batched_syev());
  if (solver == EigenSolver::kJacobi) {
    cusolverStatus_t setup = CUSOLVER_STATUS_SUCCESS;
    SolverState* state = solver_for_current_device(&setup);
    if (state != nullptr) {
      at::Tensor a = gram.clone(at::MemoryFormat::Contiguous);  // overwritten by the solver
      at::Tensor w = at::empty({B, n}, a.options());
      at::Tensor info = at::zeros({B}, a.options().dtype(at::kInt));
      // Jacobi stops at 100 sweeps; a batch with a matrix it did not finish (or whose
      // calls failed) is redone by the general solver. One synchronisation per call,
      // unless the status is deferred (then a non-converged matrix sets the flag).
      const bool solved = solve_jacobi(*state, a, w, info, vectors);
      at::Tensor sink = sink_for(a.device());
      if (solved && sink.defined()) {
        record_failures(sink, info);
        return {w, vectors ? a : at::empty({0}, a.options())};
      }
      if (solved && info.abs().max().item<int>() == 0) return {w, vectors ? a : at::empty({0}, a.options())};
    }
    return solve_general(gram, vectors, " (batched Jacobi did not converge on it or failed)");
  }
  if (solver == EigenSolver::kBatched) return solve_general(gram, vectors, "");
  return solve_torch(gram, vectors, batch_name(B, n));
}

}  // namespace dse::cuda
