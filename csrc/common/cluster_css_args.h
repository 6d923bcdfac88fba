// Argument checks of dse::cluster_css and dse::cluster_css_backward (schemas:
// csrc/ops.cpp), called first by both their CPU and their CUDA kernels (host code only).
//
// Rules, the same on every device:
//   x             (P, M, d), float32 or float64, not empty, on the kernel's device.
//   labels        (P, M) int64 on x's device, values in [-1, k) (-1 = ignored point).
//   k             >= 1.
//   keep_basis    any bool; with M == 1 (no cluster can have 2 points, S = 0) the kept
//                 bases are empty tensors of shapes (P, k, 0) and (P, k, 0, 0).
// Backward only:
//   grad          (P, k), any floating dtype (used in float64), on x's device.
//   eigenvalues,  the forward's kept basis, or None / empty tensors (then the backward
//   eigenvectors  recomputes it): both or neither, float64, on x's device (a basis on
//                 another device is refused, never moved), shapes (P, k, S) and
//                 (P, k, S, S) with S = min(M - 1, d). See check_kept_basis. Within
//                 those shapes each device lays a cluster's eigenpairs out its own way
//                 (CPU: its min(n - 1, d) eigenpairs first; CUDA: padded to the largest
//                 cluster of its size bucket, common/css_batches.h), so a basis is only
//                 meaningful to the backward on the device whose forward computed it.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <optional>

#include "common/checks.h"

namespace dse {

struct ClusterCssArgs {
  at::Tensor x, labels;  // contiguous
  int64_t P, M, d, k;
  int64_t S;  // side of the kept bases: min(M - 1, d)
};

inline ClusterCssArgs check_cluster_css_args(const at::Tensor& x, const at::Tensor& labels, int64_t k,
                                             c10::DeviceType kernel, const char* op = "cluster_css") {
  check_points(x, op);
  check_kernel_device(x, kernel, op);
  const int64_t P = x.size(0), M = x.size(1), d = x.size(2);
  check_labels(labels, P, M, x.device(), op);
  check_num_clusters(k, op);
  at::Tensor l = labels.contiguous();
  check_label_range(l, k, op);
  return {x.contiguous(), std::move(l), P, M, d, k, std::min(M - 1, d)};
}

// The kept bases of cluster_css for these arguments: rule above.
inline KeptBasis check_cluster_css_basis(const std::optional<at::Tensor>& eigenvalues,
                                         const std::optional<at::Tensor>& eigenvectors, int64_t P, int64_t k,
                                         int64_t S, const c10::Device& device, const char* op) {
  return check_kept_basis(eigenvalues, eigenvectors, {P, k, S}, {P, k, S, S},
                          "(P, k, S) and (P, k, S, S), S = min(M - 1, d)", device, op);
}

struct ClusterCssBackwardArgs : ClusterCssArgs {
  at::Tensor grad;  // (P, k) float64, contiguous
  KeptBasis basis;
};

inline ClusterCssBackwardArgs check_cluster_css_backward_args(const at::Tensor& grad, const at::Tensor& x,
                                                              const at::Tensor& labels, int64_t k,
                                                              const std::optional<at::Tensor>& eigenvalues,
                                                              const std::optional<at::Tensor>& eigenvectors,
                                                              c10::DeviceType kernel) {
  const char* op = "cluster_css_backward";
  ClusterCssBackwardArgs in{check_cluster_css_args(x, labels, k, kernel, op), {}, {}};
  in.grad = check_grad(grad, {in.P, k}, "(P, k)", x.device(), at::kDouble, op);
  in.basis = check_cluster_css_basis(eigenvalues, eigenvectors, in.P, k, in.S, x.device(), op);
  return in;
}

}  // namespace dse
