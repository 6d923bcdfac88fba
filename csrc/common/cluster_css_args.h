// Argument checks of dse::cluster_css and dse::cluster_css_backward (schemas:
// csrc/ops.cpp), called first by both their CPU and their CUDA kernels (host code only).
//
// Rules, the same on every device:
//   x             (P, M, d), float32 or float64, not empty, on the kernel's device.
//   labels        (P, M) int64 on x's device, values in [-1, k) (-1 = ignored point).
//   k             >= 1.
//   keep_basis    any bool; with M == 1 (no cluster can have 2 points, S = 0) the kept
//                 bases are empty tensors of shapes (P, k, 0) and (P, k, 0, 0).
//   sizes         optional (P, k) int64 on the CPU: the member count of every cluster
//                 (what the op returns as counts), when the caller knows it. The CUDA
//                 kernels cut the clusters into batches by size (common/css_batches.h), so
//                 they need the sizes on the host: given, they take them and never read
//                 the device; not given, they count and read them (one synchronisation).
//                 Given sizes must equal the member counts of labels: a value check
//                 (common/checks.h), at once on the CPU, by a device-side assertion on CUDA.
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
  int64_t S;              // side of the kept bases: min(M - 1, d)
  at::Tensor sizes;       // (P, k) int64 on the CPU, contiguous; undefined when not given
  PendingChecks pending;  // value checks a non-CPU kernel enforces on the device (checks.h)
};

// Member counts (P, k) int64 of labels (P, M) in [-1, k), on labels' device, without a
// host synchronisation (label -1 counts nowhere). An integer scatter-add over one flat
// dimension: exact, and deterministic also under torch.use_deterministic_algorithms.
inline at::Tensor member_counts(const at::Tensor& labels, int64_t k) {
  const int64_t P = labels.size(0);
  const at::Tensor slot = labels.where(labels >= 0, at::full({}, k, labels.options()));  // -1 -> spare bin k
  const at::Tensor key = (at::arange(P, labels.options()).unsqueeze(1) * (k + 1) + slot).reshape(-1);
  at::Tensor bins = at::zeros({P * (k + 1)}, labels.options());
  bins.scatter_add_(0, key, at::ones_like(key));
  return bins.view({P, k + 1}).narrow(1, 0, k).contiguous();
}

// sizes: rule above. The CPU kernel compares them with the counts of the (range-checked)
// labels at once; another kernel gets the comparison as a pending check.
inline at::Tensor check_css_sizes(const at::Tensor& sizes, const at::Tensor& labels, int64_t P, int64_t k,
                                  c10::DeviceType kernel, PendingChecks& pending, const char* op) {
  TORCH_CHECK(sizes.dim() == 2 && sizes.size(0) == P && sizes.size(1) == k && sizes.scalar_type() == at::kLong,
              "dse::", op, ": sizes must be an int64 tensor of shape (P, k) = (", P, ", ", k, "), got ",
              sizes.scalar_type(), " of shape ", sizes.sizes());
  TORCH_CHECK(sizes.device().is_cpu(), "dse::", op, ": sizes must be on the CPU (they are read on the host), got ",
              sizes.device());
  const at::Tensor host = sizes.contiguous();
  if (kernel == c10::DeviceType::CPU) {
    const at::Tensor differ = (member_counts(labels, k) != host).nonzero();
    if (differ.size(0) > 0) {
      const int64_t p = differ[0][0].item<int64_t>(), j = differ[0][1].item<int64_t>();
      TORCH_CHECK(false, "dse::", op, ": sizes must be the member counts of labels, but sizes[", p, ", ", j,
                  "] = ", host[p][j].item<int64_t>(), " while cluster ", j, " of problem ", p, " has ",
                  member_counts(labels, k)[p][j].item<int64_t>(), " members");
    }
  } else {
    pending.push_back({ValueCheck::kCssSizes, member_counts(labels, k).eq(host_to_device(host, labels.device())).all()});
  }
  return host;
}

inline ClusterCssArgs check_cluster_css_args(const at::Tensor& x, const at::Tensor& labels, int64_t k,
                                             const std::optional<at::Tensor>& sizes, c10::DeviceType kernel,
                                             const char* op = "cluster_css") {
  check_points(x, op);
  check_kernel_device(x, kernel, op);
  const int64_t P = x.size(0), M = x.size(1), d = x.size(2);
  check_labels(labels, P, M, x.device(), op);
  check_num_clusters(k, op);
  ClusterCssArgs in{x.contiguous(), labels.contiguous(), P, M, d, k, std::min(M - 1, d), {}, {}};
  check_label_range(in.labels, k, op, kernel, in.pending);
  if (sizes.has_value() && sizes->defined()) in.sizes = check_css_sizes(*sizes, in.labels, P, k, kernel, in.pending, op);
  return in;
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
                                                              const std::optional<at::Tensor>& sizes,
                                                              c10::DeviceType kernel) {
  const char* op = "cluster_css_backward";
  ClusterCssBackwardArgs in{check_cluster_css_args(x, labels, k, sizes, kernel, op), {}, {}};
  in.grad = check_grad(grad, {in.P, k}, "(P, k)", x.device(), at::kDouble, op);
  in.basis = check_cluster_css_basis(eigenvalues, eigenvectors, in.P, k, in.S, x.device(), op);
  return in;
}

}  // namespace dse
