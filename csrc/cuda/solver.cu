#include "cuda/solver.cuh"

#include <cusolverDn.h>

#include <algorithm>
#include <map>

#include "cuda/cuda_utils.cuh"

#define DSE_CUSOLVER_CHECK(expr)                                                                              \
  do {                                                                                                       \
    const cusolverStatus_t dse_status = (expr);                                                              \
    TORCH_CHECK(dse_status == CUSOLVER_STATUS_SUCCESS, "cuSOLVER call failed with status ",                   \
                static_cast<int>(dse_status), ": " #expr);                                                   \
  } while (0)

namespace dse::cuda {
namespace {

// One cuSOLVER handle and parameter object per (thread, device), created on first use.
struct SolverState {
  cusolverDnHandle_t handle = nullptr;
  cusolverDnParams_t params = nullptr;
  ~SolverState() {
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
  }
  DSE_CUSOLVER_CHECK(cusolverDnSetStream(state.handle, at::cuda::getCurrentCUDAStream()));
  return state;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> batched_symmetric_eigen(const at::Tensor& gram_in, bool vectors) {
  TORCH_CHECK(gram_in.is_cuda() && gram_in.dim() == 3 && gram_in.size(1) == gram_in.size(2) &&
                  gram_in.scalar_type() == at::kDouble,
              "batched_symmetric_eigen expects a (B, n, n) float64 CUDA tensor, got ", gram_in.sizes());
  const c10::cuda::CUDAGuard guard(gram_in.device());
  const int64_t B = gram_in.size(0), n = gram_in.size(1);
  at::Tensor a = gram_in.clone(at::MemoryFormat::Contiguous);  // overwritten by the solver
  at::Tensor w = at::empty({B, n}, a.options());
  if (B == 0 || n == 0) return {w, vectors ? a : at::empty({0}, a.options())};
  SolverState& solver = solver_for_current_device();
  const cusolverEigMode_t jobz = vectors ? CUSOLVER_EIG_MODE_VECTOR : CUSOLVER_EIG_MODE_NOVECTOR;
  // Column-major lower = row-major upper; the matrices are symmetric, so either works.
  const cublasFillMode_t uplo = CUBLAS_FILL_MODE_LOWER;
  // The solver takes at most 65535 matrices per call and needs n * n * batch <= INT32_MAX.
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(65535, INT32_MAX / std::max<int64_t>(1, n * n)));
  at::Tensor info = at::zeros({B}, a.options().dtype(at::kInt));
  for (int64_t start = 0; start < B; start += chunk) {
    const int64_t count = std::min(chunk, B - start);
    double* ap = a.data_ptr<double>() + start * n * n;
    double* wp = w.data_ptr<double>() + start * n;
    size_t device_bytes = 0, host_bytes = 0;
    DSE_CUSOLVER_CHECK(cusolverDnXsyevBatched_bufferSize(solver.handle, solver.params, jobz, uplo, n, CUDA_R_64F, ap,
                                                         n, CUDA_R_64F, wp, CUDA_R_64F, &device_bytes, &host_bytes,
                                                         count));
    at::Tensor device_buffer = at::empty({static_cast<int64_t>(std::max<size_t>(device_bytes, 1))},
                                         a.options().dtype(at::kByte));
    std::vector<char> host_buffer(std::max<size_t>(host_bytes, 1));
    DSE_CUSOLVER_CHECK(cusolverDnXsyevBatched(solver.handle, solver.params, jobz, uplo, n, CUDA_R_64F, ap, n,
                                              CUDA_R_64F, wp, CUDA_R_64F, device_buffer.data_ptr(), device_bytes,
                                              host_buffer.data(), host_bytes, info.data_ptr<int>() + start, count));
  }
  const int bad = info.abs().max().item<int>();  // one synchronisation per call
  TORCH_CHECK(bad == 0, "cusolverDnXsyevBatched did not converge (info = ", bad, ") on a batch of ", B, " x ", n,
              " x ", n, " Gram matrices");
  // cuSOLVER writes eigenvector i to column i of the column-major matrix: row i of our row-major one.
  return {w, vectors ? a : at::empty({0}, a.options())};
}

}  // namespace dse::cuda
