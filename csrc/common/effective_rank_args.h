// Argument checks of dse::effective_rank and dse::effective_rank_backward (schemas:
// csrc/ops.cpp), called first by both their CPU and their CUDA kernels (host code only).
//
// Rules, the same on every device:
//   x             without index: (P, m, d) matrices; with index: a (R, d) row table.
//                 float32 or float64, not empty, on the kernel's device. Any strides
//                 (the CPU kernel reads strided views in place).
//   index         None, or (P, m) int64, not empty, on x's device, values in [0, R):
//                 matrix p is made of the rows x[index[p, 0]], ..., x[index[p, m - 1]].
//                 The range is a value check (common/checks.h): at once on the CPU, by a
//                 device-side assertion on CUDA.
//   keep_basis    any bool.
// Backward only:
//   grad          (P,), any floating dtype (used in float64), on x's device.
//   eigenvalues,  the forward's kept basis, or None / empty tensors (then the backward
//   eigenvectors  recomputes it): both or neither, float64, on x's device (a basis on
//                 another device is refused, never moved), shapes (P, S) and (P, S, S)
//                 with S = min(m, d). See check_kept_basis.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <optional>

#include "common/checks.h"

namespace dse {

struct EffectiveRankArgs {
  at::Tensor x;      // as given (not made contiguous)
  at::Tensor index;  // (P, m) int64, contiguous; undefined without index
  int64_t P, m, d;
  int64_t S;  // Gram side and side of the kept bases: min(m, d)
  PendingChecks pending;  // value checks a non-CPU kernel enforces on the device (checks.h)
};

// index: rule above, for a table of `rows` rows on `device`. Returns it contiguous.
inline at::Tensor check_rank_index(const at::Tensor& index, int64_t rows, const c10::Device& device, const char* op,
                                   c10::DeviceType kernel, PendingChecks& pending) {
  TORCH_CHECK(index.dim() == 2 && index.numel() > 0 && index.scalar_type() == at::kLong, "dse::", op,
              ": index must be a non-empty 2-D int64 tensor (matrices, rows), got ", index.scalar_type(), " of shape ",
              index.sizes());
  check_on_device(index, "index", device, op);
  at::Tensor i = index.contiguous();
  if (kernel != c10::DeviceType::CPU) {
    pending.push_back({ValueCheck::kRankIndexRange, at::logical_and(i >= 0, i < rows).all()});
    return i;
  }
  const int64_t lo = i.min().item<int64_t>(), hi = i.max().item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < rows, "dse::", op, ": index must lie in [0, ", rows, ") (the rows of x), got [", lo,
              ", ", hi, "]");
  return i;
}

inline EffectiveRankArgs check_effective_rank_args(const at::Tensor& x, const std::optional<at::Tensor>& index,
                                                   c10::DeviceType kernel, const char* op = "effective_rank") {
  EffectiveRankArgs in;
  in.x = x;
  if (index.has_value()) {
    TORCH_CHECK(x.dim() == 2, "dse::", op, ": with index, x must be a 2-D (rows, dim) table, got shape ", x.sizes());
    check_float_dtype(x, "x", op);
    TORCH_CHECK(x.numel() > 0, "dse::", op, ": x must not be empty, got shape ", x.sizes());
    check_kernel_device(x, kernel, op);
    in.index = check_rank_index(*index, x.size(0), x.device(), op, kernel, in.pending);
    in.P = in.index.size(0), in.m = in.index.size(1), in.d = x.size(1);
  } else {
    check_points(x, op);
    check_kernel_device(x, kernel, op);
    in.P = x.size(0), in.m = x.size(1), in.d = x.size(2);
  }
  in.S = std::min(in.m, in.d);
  return in;
}

// The kept bases of effective_rank for these arguments: rule above.
inline KeptBasis check_effective_rank_basis(const std::optional<at::Tensor>& eigenvalues,
                                            const std::optional<at::Tensor>& eigenvectors, int64_t P, int64_t S,
                                            const c10::Device& device, const char* op) {
  return check_kept_basis(eigenvalues, eigenvectors, {P, S}, {P, S, S}, "(P, S) and (P, S, S), S = min(m, d)",
                          device, op);
}

struct EffectiveRankBackwardArgs : EffectiveRankArgs {
  at::Tensor grad;  // (P,) float64, contiguous
  KeptBasis basis;
};

inline EffectiveRankBackwardArgs check_effective_rank_backward_args(const at::Tensor& grad, const at::Tensor& x,
                                                                    const std::optional<at::Tensor>& index,
                                                                    const std::optional<at::Tensor>& eigenvalues,
                                                                    const std::optional<at::Tensor>& eigenvectors,
                                                                    c10::DeviceType kernel) {
  const char* op = "effective_rank_backward";
  EffectiveRankBackwardArgs in{check_effective_rank_args(x, index, kernel, op), {}, {}};
  in.grad = check_grad(grad, {in.P}, "(P,)", x.device(), at::kDouble, op);
  in.basis = check_effective_rank_basis(eigenvalues, eigenvectors, in.P, in.S, x.device(), op);
  return in;
}

}  // namespace dse
