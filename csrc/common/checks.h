// Argument checks shared by the kernels of every device (host code only).
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace dse {

inline void check_points(const at::Tensor& x, const char* op, const char* name = "x") {
  TORCH_CHECK(x.dim() == 3, "dse::", op, ": ", name, " must be 3-D (problems, points, dim), got shape ",
              x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "dse::", op, ": ", name,
              " must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.numel() > 0, "dse::", op, ": ", name, " must not be empty, got shape ", x.sizes());
}

inline void check_labels(const at::Tensor& labels, const at::Tensor& x, const char* op) {
  TORCH_CHECK(labels.dim() == 2 && labels.size(0) == x.size(0) && labels.size(1) == x.size(1), "dse::", op,
              ": labels must have shape (P, M) = (", x.size(0), ", ", x.size(1), "), got ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong, "dse::", op, ": labels must be int64, got ",
              labels.scalar_type());
  TORCH_CHECK(labels.device() == x.device(), "dse::", op, ": labels are on ", labels.device(),
              " but x is on ", x.device());
}

// Labels must lie in [-1, k) (-1 = ignored point). Reads two reductions.
inline void check_label_range(const at::Tensor& labels, int64_t k, const char* op) {
  if (labels.numel() == 0) return;
  const int64_t lo = labels.min().item<int64_t>(), hi = labels.max().item<int64_t>();
  TORCH_CHECK(lo >= -1 && hi < k, "dse::", op, ": labels must lie in [-1, ", k, "), got [", lo, ", ", hi, "]");
}

inline void check_cpu(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.device().is_cpu(), "dse::", op, ": expected a CPU tensor, got one on ", t.device());
}

}  // namespace dse
