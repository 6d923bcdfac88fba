// dse::effective_rank and dse::effective_rank_backward on the GPU.
//
// The matrices are staged in float64 (gathered through the index when given),
// their smaller Gram matrices formed with one batched GEMM, decomposed with the
// batched cuSOLVER eigensolver (cuda/solver.cuh), and reduced per matrix by the
// same host/device routines the CPU kernels use (common/spectrum.h). The backward
// follows the CPU kernel (cpu/singular_gradient.h): dL/dS = U diag(h / sigma) U^T S
// (or S V diag(h / sigma) V^T when taller than wide). Arguments are checked first by
// common/effective_rank_args.h, as on the CPU.
#include <torch/library.h>

#include <cmath>

#include "common/effective_rank_args.h"
#include "common/spectrum.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/value_checks.cuh"
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

// The matrices of checked arguments, staged in float64.
RankInputs stage(const EffectiveRankArgs& args) {
  RankInputs in{at::Tensor(), args.index, args.P, args.m, args.d, args.S};
  if (in.index.defined())
    in.z = args.x.index_select(0, in.index.reshape({-1})).view({in.P, in.m, in.d}).to(at::kDouble);
  else
    in.z = args.x.to(at::kDouble).contiguous();
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
  const EffectiveRankArgs args = check_effective_rank_args(x, index, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  enforce_on_device(args.pending);
  const RankInputs in = stage(args);
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
  const EffectiveRankBackwardArgs args =
      check_effective_rank_backward_args(grad_in, x, index, eigenvalues, eigenvectors, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  enforce_on_device(args.pending);
  const RankInputs in = stage(args);
  at::Tensor eig, vec;
  if (args.basis.present()) {  // the forward's kept eigenbases (float64, on x's device)
    eig = args.basis.eigenvalues;
    vec = args.basis.eigenvectors;
  } else {
    std::tie(eig, vec) = batched_symmetric_eigen(gram(in), true);
  }
  const at::Tensor& grad = args.grad;
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
