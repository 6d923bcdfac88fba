// Argument checks of the nearest-other-centroid ops, shared by the CPU and CUDA
// kernels (host code only). Each device checks that x is on its kind of device.
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "common/checks.h"

namespace dse {

struct NearestArgs {
  at::Tensor x, c, labels;  // contiguous
  at::Tensor valid;         // (P, k) bool, contiguous; undefined: every centroid exists
  int64_t P, M, d, k;
};

inline NearestArgs check_nearest_args(const at::Tensor& x, const at::Tensor& centroids, const at::Tensor& labels,
                                      const std::optional<at::Tensor>& valid, const char* op) {
  check_points(x, op);
  check_points(centroids, op, "centroids");
  check_labels(labels, x, op);
  const int64_t P = x.size(0), M = x.size(1), d = x.size(2), k = centroids.size(1);
  TORCH_CHECK(centroids.size(0) == P && centroids.size(2) == d, "dse::", op,
              ": centroids must have shape (P, k, d) with P = ", P, " and d = ", d, ", got ", centroids.sizes());
  TORCH_CHECK(centroids.scalar_type() == x.scalar_type(), "dse::", op, ": centroids dtype ", centroids.scalar_type(),
              " differs from x dtype ", x.scalar_type());
  TORCH_CHECK(centroids.device() == x.device(), "dse::", op, ": centroids are on ", centroids.device(),
              " but x is on ", x.device());
  at::Tensor v;
  if (valid.has_value()) {
    v = valid->contiguous();
    TORCH_CHECK(v.device() == x.device(), "dse::", op, ": valid is on ", v.device(), " but x is on ", x.device());
    TORCH_CHECK(v.dim() == 2 && v.size(0) == P && v.size(1) == k && v.scalar_type() == at::kBool, "dse::", op,
                ": valid must be a bool tensor of shape (", P, ", ", k, "), got ", v.scalar_type(), " ", v.sizes());
  }
  const at::Tensor l = labels.contiguous();
  check_label_range(l, k, op);
  return {x.contiguous(), centroids.contiguous(), l, v, P, M, d, k};
}

// The incoming gradient of the backward: one value per point, on x's device.
inline at::Tensor check_nearest_grad(const at::Tensor& grad, const NearestArgs& in, const char* op) {
  TORCH_CHECK(grad.sizes() == in.labels.sizes(), "dse::", op, ": grad must have shape ", in.labels.sizes(), ", got ",
              grad.sizes());
  TORCH_CHECK(grad.device() == in.x.device(), "dse::", op, ": grad is on ", grad.device(), " but x is on ",
              in.x.device());
  return grad.to(in.x.scalar_type()).contiguous();
}

}  // namespace dse
