// Effective rank on the GPU, forward and backward.
//
// The matrices are staged in float64 (gathered through the index when given),
// their smaller Gram matrices formed with one batched GEMM, decomposed with the
// batched cuSOLVER eigensolver (cuda/solver.cuh), and reduced per matrix by the
// same host/device routines the CPU kernels use (common/spectrum.h). The backward
// follows csrc/cpu/spectral_backward_cpu.cpp: dL/dS = U diag(h / sigma) U^T S
// (or S V diag(h / sigma) V^T when taller than wide).
#include <torch/library.h>

#include <cmath>

#include "common/checks.h"
#include "common/spectrum.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/solver.cuh"

namespace dse::cuda {
namespace {

__global__ void rank_from_eigs_kernel(const double* __restrict__ eig, int64_t P, int64_t S, int64_t denom,
                                      double* __restrict__ out) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p < P) out[p] = effective_rank_from_eigs(eig + p * S, S, denom);
}

// f[p, i] = (d erank / d sigma_i) / sigma_i * grad[p], 0 for singular values under the noise floor.
__global__ void rank_gradient_weights_kernel(const double* __restrict__ eig, const double* __restrict__ grad,
                                             int64_t P, int64_t S, int64_t denom, double* __restrict__ f) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= P) return;
  const double* e = eig + p * S;
  double* fp = f + p * S;
  const double floor = gram_noise_floor(e, S);
  double total = 0.0;
  for (int64_t i = 0; i < S; ++i) total += singular_from_eig(e[i], floor);
  for (int64_t i = 0; i < S; ++i) fp[i] = 0.0;
  if (!(total > 0.0)) return;  // all-zero matrix: erank is 0 and flat
  double entropy = 0.0;
  for (int64_t i = 0; i < S; ++i) {
    const double s = singular_from_eig(e[i], floor);
    if (s > 0.0) entropy -= s / total * log(s / total);
  }
  const double scale = grad[p] / static_cast<double>(denom) * exp(entropy) / total;
  for (int64_t i = 0; i < S; ++i) {
    const double s = singular_from_eig(e[i], floor);
    if (s > 0.0) fp[i] = scale * (-log(s / total) - entropy) / s;
  }
}

struct RankInputs {
  at::Tensor z;      // (P, m, d) float64 staged matrices
  at::Tensor index;  // (P, m) or undefined
  int64_t P, m, d, S;
};

RankInputs stage(const at::Tensor& x, const std::optional<at::Tensor>& index_in, const char* op) {
  TORCH_CHECK(x.is_cuda(), "dse::", op, ": expected a CUDA tensor, got one on ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "dse::", op,
              ": x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.numel() > 0, "dse::", op, ": x must not be empty, got shape ", x.sizes());
  RankInputs in;
  if (index_in.has_value()) {
    in.index = index_in->contiguous();
    TORCH_CHECK(x.dim() == 2, "dse::", op, ": with index, x must be a 2-D (rows, dim) table, got shape ", x.sizes());
    TORCH_CHECK(in.index.dim() == 2 && in.index.numel() > 0 && in.index.scalar_type() == at::kLong, "dse::", op,
                ": index must be a non-empty 2-D int64 tensor (matrices, rows), got ", in.index.sizes());
    check_on_device(in.index, x, op, "index");
    const int64_t lo = in.index.min().item<int64_t>(), hi = in.index.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < x.size(0), "dse::", op, ": index must lie in [0, ", x.size(0), "), got [", lo, ", ",
                hi, "]");
    in.P = in.index.size(0), in.m = in.index.size(1), in.d = x.size(1);
    in.z = x.index_select(0, in.index.reshape({-1})).view({in.P, in.m, in.d}).to(at::kDouble);
  } else {
    check_points(x, op);
    in.P = x.size(0), in.m = x.size(1), in.d = x.size(2);
    in.z = x.to(at::kDouble).contiguous();
  }
  in.S = std::min(in.m, in.d);
  return in;
}

at::Tensor gram(const RankInputs& in) {
  const at::Tensor zt = in.z.transpose(1, 2);
  return (in.m <= in.d ? at::bmm(in.z, zt) : at::bmm(zt, in.z)).contiguous();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> effective_rank(const at::Tensor& x,
                                                              const std::optional<at::Tensor>& index,
                                                              bool keep_basis) {
  const c10::cuda::CUDAGuard guard(x.device());
  const RankInputs in = stage(x, index, "effective_rank");
  auto [eig, vec] = batched_symmetric_eigen(gram(in), keep_basis);
  at::Tensor values = at::empty({in.P}, eig.options());
  rank_from_eigs_kernel<<<blocks_for(in.P), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      eig.const_data_ptr<double>(), in.P, in.S, in.S, values.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto empty = eig.options();
  if (!keep_basis) return {values.to(x.scalar_type()), at::empty({0}, empty), at::empty({0}, empty)};
  return {values.to(x.scalar_type()), eig, vec};
}

at::Tensor effective_rank_backward(const at::Tensor& grad_in, const at::Tensor& x,
                                   const std::optional<at::Tensor>& index, const std::optional<at::Tensor>& eigenvalues,
                                   const std::optional<at::Tensor>& eigenvectors) {
  const char* op = "effective_rank_backward";
  const c10::cuda::CUDAGuard guard(x.device());
  const RankInputs in = stage(x, index, op);
  TORCH_CHECK(grad_in.dim() == 1 && grad_in.size(0) == in.P, "dse::", op, ": grad must have shape (", in.P,
              ",), got ", grad_in.sizes());
  check_on_device(grad_in, x, op, "grad");
  at::Tensor eig, vec;
  if (eigenvalues.has_value() && eigenvalues->numel() > 0) {  // the forward's kept eigenbases
    TORCH_CHECK(eigenvectors.has_value() && eigenvalues->sizes() == at::IntArrayRef({in.P, in.S}) &&
                    eigenvectors->sizes() == at::IntArrayRef({in.P, in.S, in.S}),
                "dse::", op, ": the basis must be (P, S) eigenvalues and (P, S, S) eigenvectors with S = ", in.S);
    eig = eigenvalues->to(at::kDouble).contiguous();
    vec = eigenvectors->to(at::kDouble).contiguous();
  } else {
    std::tie(eig, vec) = batched_symmetric_eigen(gram(in), true);
  }
  const at::Tensor grad = grad_in.to(at::kDouble).contiguous();
  at::Tensor f = at::empty({in.P, in.S}, eig.options());
  rank_gradient_weights_kernel<<<blocks_for(in.P), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      eig.const_data_ptr<double>(), grad.const_data_ptr<double>(), in.P, in.S, in.S, f.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // W = E^T diag(f) E (rows of E are the eigenvectors), then dL/dZ = W Z or Z W.
  const at::Tensor w = at::bmm(vec.transpose(1, 2), vec * f.unsqueeze(-1));
  const at::Tensor y = in.m <= in.d ? at::bmm(w, in.z) : at::bmm(in.z, w);
  if (!in.index.defined()) return y.to(x.scalar_type());
  // Rows used by several matrices add up (index_put_ with accumulate is deterministic on CUDA).
  at::Tensor out = at::zeros({x.size(0), x.size(1)}, y.options());
  out.index_put_({in.index.reshape({-1})}, y.reshape({in.P * in.m, in.d}), /*accumulate=*/true);
  return out.to(x.scalar_type());
}

TORCH_LIBRARY_IMPL(dse, CUDA, m) {
  m.impl("effective_rank", &effective_rank);
  m.impl("effective_rank_backward", &effective_rank_backward);
}

}  // namespace dse::cuda
