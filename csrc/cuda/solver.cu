#include "cuda/solver.cuh"

#include <cusolverDn.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <vector>

#include "cuda/cuda_utils.cuh"

#define DSE_CUSOLVER_CHECK(expr)                                                                              \
  do {                                                                                                       \
    const cusolverStatus_t dse_status = (expr);                                                              \
    TORCH_CHECK(dse_status == CUSOLVER_STATUS_SUCCESS, "cuSOLVER call failed with status ",                   \
                static_cast<int>(dse_status), ": " #expr);                                                   \
  } while (0)

namespace dse::cuda {
namespace {

std::atomic<int> pinned_solver{static_cast<int>(EigenSolver::kAuto)};

// One cuSOLVER handle, parameter object and Jacobi settings per (thread, device),
// created on first use.
struct SolverState {
  cusolverDnHandle_t handle = nullptr;
  cusolverDnParams_t params = nullptr;
  syevjInfo_t jacobi = nullptr;
  ~SolverState() {
    if (jacobi != nullptr) cusolverDnDestroySyevjInfo(jacobi);
    if (params != nullptr) cusolverDnDestroyParams(params);
    if (handle != nullptr) cusolverDnDestroy(handle);
  }
};

SolverState& solver_for_current_device() {
  thread_local std::map<int, SolverState> states;
  const int device = at::cuda::current_device();
  SolverState& state = states[device];
  if (state.handle == nullptr) {
    DSE_CUSOLVER_CHECK(cusolverDnCreate(&state.handle));
    DSE_CUSOLVER_CHECK(cusolverDnCreateParams(&state.params));
    DSE_CUSOLVER_CHECK(cusolverDnCreateSyevjInfo(&state.jacobi));
    // Converge to machine precision (tolerance 0 = eps), eigenvalues ascending.
    DSE_CUSOLVER_CHECK(cusolverDnXsyevjSetTolerance(state.jacobi, 0.0));
    DSE_CUSOLVER_CHECK(cusolverDnXsyevjSetMaxSweeps(state.jacobi, 100));
    DSE_CUSOLVER_CHECK(cusolverDnXsyevjSetSortEig(state.jacobi, 1));
  }
  DSE_CUSOLVER_CHECK(cusolverDnSetStream(state.handle, at::cuda::getCurrentCUDAStream()));
  return state;
}

at::Tensor device_bytes_buffer(const at::Tensor& like, int64_t bytes) {
  return at::empty({std::max<int64_t>(bytes, 1)}, like.options().dtype(at::kByte));
}

// Column-major lower = row-major upper; the matrices are symmetric, so either works.
constexpr cublasFillMode_t kUplo = CUBLAS_FILL_MODE_LOWER;

// The cuSOLVER batched routines take at most 65535 matrices per call and need
// n * n * batch <= INT32_MAX.
int64_t chunk_for(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>(65535, INT32_MAX / std::max<int64_t>(1, n * n)));
}

// a (B, n, n) is overwritten with the eigenvectors (cuSOLVER writes eigenvector i
// to column i of the column-major matrix: row i of our row-major one), w (B, n)
// with the eigenvalues, info (B,) with each matrix's status.
void solve_jacobi(SolverState& s, at::Tensor& a, at::Tensor& w, at::Tensor& info, bool vectors) {
  const int n = static_cast<int>(a.size(1));
  const int64_t B = a.size(0), chunk = chunk_for(n);
  const cusolverEigMode_t jobz = vectors ? CUSOLVER_EIG_MODE_VECTOR : CUSOLVER_EIG_MODE_NOVECTOR;
  for (int64_t start = 0; start < B; start += chunk) {
    const int count = static_cast<int>(std::min(chunk, B - start));
    double* ap = a.data_ptr<double>() + start * n * n;
    double* wp = w.data_ptr<double>() + start * n;
    int lwork = 0;
    DSE_CUSOLVER_CHECK(cusolverDnDsyevjBatched_bufferSize(s.handle, jobz, kUplo, n, ap, n, wp, &lwork, s.jacobi,
                                                          count));
    at::Tensor work = at::empty({std::max(lwork, 1)}, a.options());
    DSE_CUSOLVER_CHECK(cusolverDnDsyevjBatched(s.handle, jobz, kUplo, n, ap, n, wp, work.data_ptr<double>(), lwork,
                                               info.data_ptr<int>() + start, s.jacobi, count));
  }
}

#ifdef DSE_HAVE_XSYEV_BATCHED
void solve_batched(SolverState& s, at::Tensor& a, at::Tensor& w, at::Tensor& info, bool vectors) {
  const int64_t B = a.size(0), n = a.size(1), chunk = chunk_for(n);
  const cusolverEigMode_t jobz = vectors ? CUSOLVER_EIG_MODE_VECTOR : CUSOLVER_EIG_MODE_NOVECTOR;
  for (int64_t start = 0; start < B; start += chunk) {
    const int64_t count = std::min(chunk, B - start);
    double* ap = a.data_ptr<double>() + start * n * n;
    double* wp = w.data_ptr<double>() + start * n;
    size_t device_bytes = 0, host_bytes = 0;
    DSE_CUSOLVER_CHECK(cusolverDnXsyevBatched_bufferSize(s.handle, s.params, jobz, kUplo, n, CUDA_R_64F, ap, n,
                                                         CUDA_R_64F, wp, CUDA_R_64F, &device_bytes, &host_bytes,
                                                         count));
    at::Tensor device_buffer = device_bytes_buffer(a, static_cast<int64_t>(device_bytes));
    std::vector<char> host_buffer(std::max<size_t>(host_bytes, 1));
    DSE_CUSOLVER_CHECK(cusolverDnXsyevBatched(s.handle, s.params, jobz, kUplo, n, CUDA_R_64F, ap, n, CUDA_R_64F, wp,
                                              CUDA_R_64F, device_buffer.data_ptr(), device_bytes, host_buffer.data(),
                                              host_bytes, info.data_ptr<int>() + start, count));
  }
}
#endif

// torch's own solver: always there, raises on its own when it fails.
std::tuple<at::Tensor, at::Tensor> solve_torch(const at::Tensor& gram, bool vectors) {
  if (!vectors) return {at::linalg_eigvalsh(gram), at::empty({0}, gram.options())};
  auto [w, v] = at::linalg_eigh(gram);
  return {w, v.transpose(1, 2).contiguous()};  // columns -> rows
}

}  // namespace

EigenSolver set_eigen_solver(EigenSolver solver) {
  return static_cast<EigenSolver>(pinned_solver.exchange(static_cast<int>(solver)));
}

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
  EigenSolver solver = choose_eigen_solver(n, static_cast<EigenSolver>(pinned_solver.load()), have_batched_syev());
  if (solver == EigenSolver::kJacobi) {
    at::Tensor a = gram_in.clone(at::MemoryFormat::Contiguous);  // overwritten by the solver
    at::Tensor w = at::empty({B, n}, a.options());
    at::Tensor info = at::zeros({B}, a.options().dtype(at::kInt));
    solve_jacobi(solver_for_current_device(), a, w, info, vectors);
    // One synchronisation per call. Jacobi stops at 100 sweeps; a batch with a
    // matrix it did not finish is redone by the general solver.
    if (info.abs().max().item<int>() == 0) return {w, vectors ? a : at::empty({0}, a.options())};
    solver = general_eigen_solver(have_batched_syev());
  }
#ifdef DSE_HAVE_XSYEV_BATCHED
  if (solver == EigenSolver::kBatched) {
    at::Tensor a = gram_in.clone(at::MemoryFormat::Contiguous);
    at::Tensor w = at::empty({B, n}, a.options());
    at::Tensor info = at::zeros({B}, a.options().dtype(at::kInt));
    solve_batched(solver_for_current_device(), a, w, info, vectors);
    const int bad = info.abs().max().item<int>();
    TORCH_CHECK(bad == 0, "cusolverDnXsyevBatched did not converge (info = ", bad, ") on a batch of ", B, " x ", n,
                " x ", n, " Gram matrices");
    return {w, vectors ? a : at::empty({0}, a.options())};
  }
#endif
  return solve_torch(gram_in, vectors);
}

}  // namespace dse::cuda
