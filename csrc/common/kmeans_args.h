// Argument checks of dse::kmeans (schema: csrc/ops.cpp), called first by both its
// CPU and its CUDA kernel (host code only).
//
// Rules, the same on every device:
//   x          (P, M, d), float32 or float64, not empty, on the kernel's device.
//   counts     (P,) int64, on the CPU or on x's device; every counts[p] in [k, M]:
//              a value check (common/checks.h). CPU counts (what callers that describe
//              the batch on the host pass, and what dse_ext passes) are checked on the
//              host and copied to x's device without a synchronisation (pinned memory);
//              counts on a GPU are checked there by a device-side assertion. (Through the
//              dispatcher a CUDA counts with a CPU x selects the CUDA kernel, which then
//              refuses x: put x on the GPU, or counts on the CPU.)
//   k          >= 1.   max_iters >= 0.   tol >= 0.
//   init       0 (k-means++, D^2 sampling) or 1 (D sampling).
//   seed       any int64; its bit pattern is the RNG seed (common/rng.h).
// Not an argument rule but a capacity: the CUDA kernel keeps k int counters in
// 48 KiB of shared memory (k <= 12288) and says so when k is larger.
#pragma once
#include <ATen/ATen.h>

#include "common/checks.h"

namespace dse {

// counts: see the rule above; `device` is x's device. Returns them contiguous where they
// are (check_kmeans_args moves CPU counts to x's device). Counts on a GPU are only there when
// x is, so their check is always a pending one.
inline at::Tensor check_kmeans_counts(const at::Tensor& counts, int64_t P, int64_t M, int64_t k,
                                      const c10::Device& device, PendingChecks& pending, const char* op) {
  TORCH_CHECK(counts.dim() == 1 && counts.size(0) == P, "dse::", op, ": counts must have shape (P,) = (", P,
              ",), one point count per problem, got ", counts.sizes());
  TORCH_CHECK(counts.scalar_type() == at::kLong, "dse::", op, ": counts must be int64, got ", counts.scalar_type());
  TORCH_CHECK(counts.device().is_cpu() || counts.device() == device, "dse::", op, ": counts is on ", counts.device(),
              " but must be on the CPU or on x's device (", device, ")");
  if (!counts.device().is_cpu()) {  // on x's device: checked there
    const at::Tensor on_device = counts.contiguous();
    pending.push_back({ValueCheck::kKmeansCounts, at::logical_and(on_device >= k, on_device <= M).all()});
    return on_device;
  }
  const at::Tensor host = counts.contiguous();
  const int64_t* cnt = host.const_data_ptr<int64_t>();
  for (int64_t p = 0; p < P; ++p)
    TORCH_CHECK(cnt[p] >= k && cnt[p] <= M, "dse::", op, ": problem ", p, " has counts[", p, "] = ", cnt[p],
                " points; need between k = ", k, " and M = ", M);
  return host;
}

inline void check_kmeans_options(int64_t k, int64_t max_iters, double tol, int64_t init, const char* op) {
  check_num_clusters(k, op);
  TORCH_CHECK(max_iters >= 0, "dse::", op, ": max_iters must be >= 0, got ", max_iters);
  TORCH_CHECK(tol >= 0.0, "dse::", op, ": tol must be >= 0, got ", tol);
  TORCH_CHECK(init == 0 || init == 1, "dse::", op, ": init must be 0 (D^2 sampling) or 1 (D sampling), got ", init);
}

struct KmeansArgs {
  at::Tensor x;           // (P, M, d), contiguous
  at::Tensor counts;      // (P,) int64, contiguous, on x's device
  int64_t P, M, d;
  PendingChecks pending;  // value checks a non-CPU kernel enforces on the device (checks.h)
};

inline KmeansArgs check_kmeans_args(const at::Tensor& x, const at::Tensor& counts, int64_t k, int64_t max_iters,
                                    double tol, int64_t init, c10::DeviceType kernel) {
  const char* op = "kmeans";
  check_points(x, op);
  check_kernel_device(x, kernel, op);
  const int64_t P = x.size(0), M = x.size(1), d = x.size(2);
  check_kmeans_options(k, max_iters, tol, init, op);
  KmeansArgs in{x.contiguous(), {}, P, M, d, {}};
  in.counts = check_kmeans_counts(counts, P, M, k, x.device(), in.pending, op);
  if (in.counts.device() != x.device()) in.counts = host_to_device(in.counts, x.device());
  return in;
}

}  // namespace dse
