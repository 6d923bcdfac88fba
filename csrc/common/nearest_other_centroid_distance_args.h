// Argument checks of dse::nearest_other_centroid_distance and its backward (schemas:
// csrc/ops.cpp), called first by both their CPU and their CUDA kernels (host code only).
//
// Rules, the same on every device:
//   x          (P, M, d), float32 or float64, not empty, on the kernel's device.
//   centroids  (P, k, d), not empty, x's dtype, on x's device.
//   labels     (P, M) int64 on x's device, values in [-1, k) (-1 = ignored point).
//   valid      None (every centroid exists) or (P, k) bool on x's device.
// Backward only:
//   grad       (P, M), any floating dtype (used in x's dtype), on x's device.
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "common/checks.h"

namespace dse {

struct NearestArgs {
  at::Tensor x, c, labels;  // contiguous
  at::Tensor valid;         // (P, k) bool, contiguous; undefined: every centroid exists
  int64_t P, M, d, k;
  PendingChecks pending;  // value checks a non-CPU kernel enforces on the device (checks.h)
};

// valid: rule above, for P problems of k centroids on `device`. Returns it contiguous.
inline at::Tensor check_valid_centroids(const at::Tensor& valid, int64_t P, int64_t k, const c10::Device& device,
                                        const char* op) {
  TORCH_CHECK(valid.dim() == 2 && valid.size(0) == P && valid.size(1) == k && valid.scalar_type() == at::kBool,
              "dse::", op, ": valid must be a bool tensor of shape (P, k) = (", P, ", ", k, "), got ",
              valid.scalar_type(), " of shape ", valid.sizes());
  check_on_device(valid, "valid", device, op);
  return valid.contiguous();
}

inline NearestArgs check_nearest_args(const at::Tensor& x, const at::Tensor& centroids, const at::Tensor& labels,
                                      const std::optional<at::Tensor>& valid, c10::DeviceType kernel,
                                      const char* op = "nearest_other_centroid_distance") {
  check_points(x, op);
  check_kernel_device(x, kernel, op);
  check_points(centroids, op, "centroids");
  const int64_t P = x.size(0), M = x.size(1), d = x.size(2), k = centroids.size(1);
  TORCH_CHECK(centroids.size(0) == P && centroids.size(2) == d, "dse::", op,
              ": centroids must have shape (P, k, d) with P = ", P, " and d = ", d, ", got ", centroids.sizes());
  TORCH_CHECK(centroids.scalar_type() == x.scalar_type(), "dse::", op, ": centroids must have x's dtype ",
              x.scalar_type(), ", got ", centroids.scalar_type());
  check_on_device(centroids, "centroids", x.device(), op);
  check_labels(labels, P, M, x.device(), op);
  const at::Tensor v = valid.has_value() ? check_valid_centroids(*valid, P, k, x.device(), op) : at::Tensor();
  NearestArgs in{x.contiguous(), centroids.contiguous(), labels.contiguous(), v, P, M, d, k, {}};
  check_label_range(in.labels, k, op, kernel, in.pending);
  return in;
}

struct NearestBackwardArgs : NearestArgs {
  at::Tensor grad;  // (P, M) in x's dtype, contiguous
};

inline NearestBackwardArgs check_nearest_backward_args(const at::Tensor& grad, const at::Tensor& x,
                                                       const at::Tensor& centroids, const at::Tensor& labels,
                                                       const std::optional<at::Tensor>& valid,
                                                       c10::DeviceType kernel) {
  const char* op = "nearest_other_centroid_distance_backward";
  NearestBackwardArgs in{check_nearest_args(x, centroids, labels, valid, kernel, op), {}};
  in.grad = check_grad(grad, {in.P, in.M}, "(P, M)", x.device(), x.scalar_type(), op);
  return in;
}

}  // namespace dse
