// Building blocks of the argument checks (host code only). Every operator has one
// header common/<op>_args.h that combines them into the checks its CPU and CUDA
// kernels both call first, so that an argument is accepted or refused with the
// same message on every device.
//
// Functions that compare devices take the device x is on (`device`) as a plain
// parameter rather than reading it from x: the C++ tests exercise the CUDA-side
// rules with CPU tensors and device = cuda:0 on machines without a GPU.
#pragma once
#include <ATen/ATen.h>
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace dse {

// ---------------------------------------------------------------- value checks
// A check of tensor *values* (labels in range, point counts within bounds, cluster sizes
// that match the labels) needs the values on the host: free on the CPU, a host
// synchronisation on CUDA, where it would stall every training step. So each value check
// is one predicate, a 0-dim bool tensor computed with ATen ops on the values' device, and
// each device's kernel enforces it its way:
//   CPU   at once, with TORCH_CHECK and a message naming the offending values;
//   CUDA  with a device-side assertion launched on the stream before any kernel reads the
//         values (cuda/value_checks.cuh): no synchronisation. A failure stops the stream,
//         the device prints the check's message, and the next synchronisation raises a
//         CUDA error ("device-side assert triggered"), as torch's own CUDA indexing kernels
//         do with an index out of range. The process's CUDA context is unusable after it:
//         the checked Python functions (dse_ext.functional) validate on the host first.
enum class ValueCheck : int {
  kLabelRange = 0,      // labels in [-1, k)
  kRankIndexRange = 1,  // effective_rank's index in [0, rows)
  kKmeansCounts = 2,    // kmeans' counts in [k, M]
  kCssSizes = 3,        // cluster_css' sizes equal to the member counts of its labels
};

struct PendingCheck {
  ValueCheck what;
  at::Tensor ok;  // 0-dim bool on the values' device: true when the check passes
};
using PendingChecks = std::vector<PendingCheck>;

// Copies a small host tensor to `device` without synchronising: through pinned memory
// with a non-blocking copy (a copy from pageable memory waits for the stream). The
// caching host allocator keeps the pinned block until the copy has run.
inline at::Tensor host_to_device(const at::Tensor& host, const c10::Device& device) {
  if (device.is_cpu()) return host.contiguous();
  return host.contiguous().pin_memory().to(device, /*non_blocking=*/true);
}

// x must be on the kind of device whose kernel runs (CPU kernel: a CPU tensor).
// The dispatcher picks the kernel from the tensors' devices, so this fails only on
// direct calls of a kernel function or on tensors spread over several kinds of
// device (then the dispatcher picks the CUDA kernel and x may still be on the CPU).
inline void check_kernel_device(const at::Tensor& x, c10::DeviceType kernel, const char* op) {
  TORCH_CHECK(x.device().type() == kernel, "dse::", op, ": this is the ", c10::DeviceTypeName(kernel),
              " kernel but x is on ", x.device(), "; put x and every other tensor argument on one device");
}

// Tensor argument `name` must be on x's device.
inline void check_on_device(const at::Tensor& t, const char* name, const c10::Device& device, const char* op) {
  TORCH_CHECK(t.device() == device, "dse::", op, ": ", name, " is on ", t.device(), " but x is on ", device,
              "; pass ", name, " on x's device");
}

inline void check_float_dtype(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "dse::", op, ": ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

// Points (P, M, d): 3-D, float32 or float64, not empty.
inline void check_points(const at::Tensor& x, const char* op, const char* name = "x") {
  TORCH_CHECK(x.dim() == 3, "dse::", op, ": ", name, " must be 3-D (problems, points, dim), got shape ",
              x.sizes());
  check_float_dtype(x, name, op);
  TORCH_CHECK(x.numel() > 0, "dse::", op, ": ", name, " must not be empty, got shape ", x.sizes());
}

// Labels (P, M) int64 on x's device. Their values are checked by check_label_range.
inline void check_labels(const at::Tensor& labels, int64_t P, int64_t M, const c10::Device& device, const char* op) {
  TORCH_CHECK(labels.dim() == 2 && labels.size(0) == P && labels.size(1) == M, "dse::", op,
              ": labels must have shape (P, M) = (", P, ", ", M, "), got ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong, "dse::", op, ": labels must be int64, got ", labels.scalar_type());
  check_on_device(labels, "labels", device, op);
}

// Labels must lie in [-1, k) (-1 = ignored point): a value check (above). The CPU kernel
// checks at once; for any other kernel the predicate is added to `pending`.
inline void check_label_range(const at::Tensor& labels, int64_t k, const char* op, c10::DeviceType kernel,
                              PendingChecks& pending) {
  if (labels.numel() == 0) return;
  if (kernel != c10::DeviceType::CPU) {
    pending.push_back({ValueCheck::kLabelRange, at::logical_and(labels >= -1, labels < k).all()});
    return;
  }
  const int64_t lo = labels.min().item<int64_t>(), hi = labels.max().item<int64_t>();
  TORCH_CHECK(lo >= -1 && hi < k, "dse::", op, ": labels must lie in [-1, ", k, "), got [", lo, ", ", hi, "]");
}

inline void check_num_clusters(int64_t k, const char* op) {
  TORCH_CHECK(k >= 1, "dse::", op, ": k must be >= 1, got ", k);
}

// The incoming gradient of a backward: a floating tensor of shape `sizes` on x's
// device. Returned as a contiguous tensor of dtype `as`.
inline at::Tensor check_grad(const at::Tensor& grad, at::IntArrayRef sizes, const char* layout,
                             const c10::Device& device, at::ScalarType as, const char* op) {
  TORCH_CHECK(grad.sizes() == sizes, "dse::", op, ": grad must have shape ", layout, " = ", sizes, ", got ",
              grad.sizes());
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), "dse::", op, ": grad must be a floating tensor, got ",
              grad.scalar_type());
  check_on_device(grad, "grad", device, op);
  return grad.to(as).contiguous();
}

// The Gram eigenbases a forward kept (keep_basis=True), handed back to its backward.
struct KeptBasis {
  at::Tensor eigenvalues, eigenvectors;  // contiguous float64; undefined when none was given
  bool present() const { return eigenvalues.defined(); }
};

// Rule, the same on every device: a basis is "given" when the tensor is passed and
// not empty (a forward without keep_basis returns empty tensors, and autograd hands
// them back unchanged). Eigenvalues and eigenvectors come together; both must be
// float64 (the dtype the forward returns them in: they are never converted), on x's
// device (never moved: a basis kept on another device belongs to another call) and
// of exactly the shapes the forward returns (`layout` names them in messages).
inline KeptBasis check_kept_basis(const std::optional<at::Tensor>& eigenvalues,
                                  const std::optional<at::Tensor>& eigenvectors, at::IntArrayRef eig_sizes,
                                  at::IntArrayRef vec_sizes, const char* layout, const c10::Device& device,
                                  const char* op) {
  const bool have_eig = eigenvalues.has_value() && eigenvalues->numel() > 0;
  const bool have_vec = eigenvectors.has_value() && eigenvectors->numel() > 0;
  TORCH_CHECK(have_eig == have_vec, "dse::", op, ": ", have_eig ? "eigenvalues" : "eigenvectors", " given without ",
              have_eig ? "eigenvectors" : "eigenvalues",
              "; pass both tensors a forward with keep_basis=True returned, or neither");
  if (!have_eig) return {};
  const std::pair<const at::Tensor*, const char*> parts[] = {{&*eigenvalues, "eigenvalues"},
                                                             {&*eigenvectors, "eigenvectors"}};
  for (const auto& [t, name] : parts)
    TORCH_CHECK(t->scalar_type() == at::kDouble, "dse::", op, ": ", name,
                " must be float64 (as the forward with keep_basis=True returns them), got ", t->scalar_type());
  for (const auto& [t, name] : parts) check_on_device(*t, name, device, op);
  TORCH_CHECK(eigenvalues->sizes() == eig_sizes && eigenvectors->sizes() == vec_sizes, "dse::", op,
              ": the kept basis must be eigenvalues of shape ", eig_sizes, " and eigenvectors of shape ", vec_sizes,
              " (", layout, "), got ", eigenvalues->sizes(), " and ", eigenvectors->sizes());
  return {eigenvalues->contiguous(), eigenvectors->contiguous()};
}

}  // namespace dse
