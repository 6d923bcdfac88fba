// Batched k-means on the GPU: k-means++ seeding (one block per problem, the
// shared counter-based RNG of common/rng.h), then Lloyd iterations whose
// per-problem convergence flags stay on the device: the host launches
// max_iters rounds without synchronising, and a converged problem's kernels do
// nothing. Distances are measured directly in float64; every sum runs over the
// points in order, so results are deterministic. Semantics as the CPU kernel
// (csrc/cpu/kmeans_cpu.cpp): D^2 or D sampling, an empty cluster keeps its
// centroid, a problem stops after the first update whose centroid shift is
// <= tol, labels are re-assigned to the returned centroids, padding gets -1.
#include <torch/library.h>

#include <cmath>

#include "common/checks.h"
#include "common/rng.h"
#include "cuda/cuda_utils.cuh"

namespace dse::cuda {
namespace {

constexpr int kSeedThreads = 256;

template <typename scalar_t>
__device__ double squared_distance_to(const scalar_t* __restrict__ a, const double* __restrict__ c, int64_t d) {
  double acc = 0.0;
  for (int64_t t = 0; t < d; ++t) {
    const double diff = static_cast<double>(a[t]) - c[t];
    acc += diff * diff;
  }
  return acc;
}

// One block per problem. c: (P, k, d) float64 output; dist2: (P, M) scratch.
template <typename scalar_t>
__global__ void seed_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ counts, int64_t M, int64_t d,
                            int64_t k, int64_t init, uint64_t seed, double* __restrict__ c,
                            double* __restrict__ dist2) {
  const int64_t p = blockIdx.x;
  const int64_t n = counts[p];
  const scalar_t* xp = x + p * M * d;
  double* cp = c + p * k * d;
  double* w = dist2 + p * M;
  __shared__ double partial[kSeedThreads];
  __shared__ int64_t chosen;
  const int tid = threadIdx.x;
  const int64_t chunk = (n + kSeedThreads - 1) / kSeedThreads;  // thread tid owns [tid * chunk, (tid + 1) * chunk)
  for (int64_t j = 0; j < k; ++j) {
    if (tid == 0) {
      const double u = uniform01(seed, static_cast<uint64_t>(p), static_cast<uint64_t>(j));
      if (j == 0) {
        chosen = min(static_cast<int64_t>(u * n), n - 1);
      } else {
        // first point whose cumulative weight exceeds u * total (weights: D^2 or D)
        double total = 0.0;
        for (int q = 0; q < kSeedThreads; ++q) total += partial[q];
        if (total > 0.0) {
          const double target = u * total;
          double before = 0.0;
          int64_t pick = -1, last_positive = -1;
          for (int q = 0; q < kSeedThreads && pick < 0; ++q) {
            if (before + partial[q] > target) {
              double cum = before;
              for (int64_t i = q * chunk; i < min(n, (q + 1) * chunk); ++i) {
                const double wi = init == 0 ? w[i] : sqrt(w[i]);
                cum += wi;
                if (cum > target) {
                  pick = i;
                  break;
                }
              }
            }
            before += partial[q];
          }
          if (pick < 0)  // rounding left the target beyond the last weight
            for (int64_t i = n - 1; i >= 0 && last_positive < 0; --i)
              if (w[i] > 0.0) last_positive = i;
          chosen = pick >= 0 ? pick : last_positive;
        } else {  // every point coincides with a chosen centroid
          chosen = min(static_cast<int64_t>(u * n), n - 1);
        }
      }
    }
    __syncthreads();
    const int64_t ci = chosen;
    for (int64_t t = tid; t < d; t += kSeedThreads) cp[j * d + t] = static_cast<double>(xp[ci * d + t]);
    __syncthreads();
    double local = 0.0;
    for (int64_t i = tid * chunk; i < min(n, (tid + 1) * chunk); ++i) {
      const double v = squared_distance_to(xp + i * d, cp + j * d, d);
      w[i] = j == 0 ? v : min(w[i], v);
      local += init == 0 ? w[i] : sqrt(w[i]);
    }
    partial[tid] = local;
    __syncthreads();
  }
}

// Nearest centroid of every point of the active problems (ties to the lowest
// index); padding gets -1. One warp per point: the lanes read the point and each
// centroid in coalesced strides and add their partial distances in a fixed
// shuffle tree (deterministic).
constexpr int kWarp = 32;

template <typename scalar_t>
__global__ void assign_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ counts,
                              const double* __restrict__ c, const bool* __restrict__ active, int64_t P, int64_t M,
                              int64_t d, int64_t k, int64_t* __restrict__ labels) {
  const int64_t e = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;  // the point
  const int lane = threadIdx.x % kWarp;
  if (e >= P * M) return;  // uniform within the warp
  const int64_t p = e / M, i = e % M;
  if (active != nullptr && !active[p]) return;
  if (i >= counts[p]) {
    if (lane == 0) labels[e] = -1;
    return;
  }
  const scalar_t* xe = x + e * d;
  int64_t best = 0;
  double best_sq = 0.0;
  for (int64_t j = 0; j < k; ++j) {
    const double* cj = c + (p * k + j) * d;
    double sq = 0.0;
    for (int64_t t = lane; t < d; t += kWarp) {
      const double diff = static_cast<double>(xe[t]) - cj[t];
      sq += diff * diff;
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) sq += __shfl_xor_sync(0xffffffffu, sq, offset);
    if (j == 0 || sq < best_sq) {  // every lane holds the same sum: the same decision
      best_sq = sq;
      best = j;
    }
  }
  if (lane == 0) labels[e] = best;
}

// Segmented centroid update: block (p, t-tile) walks the points of problem p in
// order once; thread t adds x[i, t] into updated[p, labels[i], t], an entry no
// other thread touches (no atomics on floats: deterministic). The member counts
// go to shared memory first. An empty cluster keeps its centroid.
template <typename scalar_t>
__global__ void update_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ counts,
                              const int64_t* __restrict__ labels, const double* __restrict__ c,
                              const bool* __restrict__ active, int64_t M, int64_t d, int64_t k,
                              double* __restrict__ updated) {
  extern __shared__ int members[];  // (k,)
  const int64_t p = blockIdx.x;
  const int64_t t = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t base = p * k * d;
  if (!active[p]) {  // uniform within the block
    if (t < d)
      for (int64_t j = 0; j < k; ++j) updated[base + j * d + t] = c[base + j * d + t];
    return;
  }
  const int64_t n = counts[p];
  const int64_t* lp = labels + p * M;
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) members[j] = 0;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) atomicAdd(&members[lp[i]], 1);  // integer: exact
  __syncthreads();
  if (t >= d) return;
  for (int64_t j = 0; j < k; ++j) updated[base + j * d + t] = 0.0;
  const scalar_t* xp = x + p * M * d + t;
  for (int64_t i = 0; i < n; ++i) updated[base + lp[i] * d + t] += static_cast<double>(xp[i * d]);
  for (int64_t j = 0; j < k; ++j) {
    const int64_t at = base + j * d + t;
    updated[at] = members[j] > 0 ? updated[at] / static_cast<double>(members[j]) : c[at];
  }
}

// One block per problem: shift = |updated - c|_F; c = updated; count the update; stop when shift <= tol.
__global__ void converge_kernel(double* __restrict__ c, const double* __restrict__ updated, bool* __restrict__ active,
                                int64_t* __restrict__ iterations, int64_t kd, double tol) {
  const int64_t p = blockIdx.x;
  if (!active[p]) return;
  __shared__ double partial[kThreads];
  double local = 0.0;
  for (int64_t e = threadIdx.x; e < kd; e += blockDim.x) {
    const double diff = updated[p * kd + e] - c[p * kd + e];
    local += diff * diff;
    c[p * kd + e] = updated[p * kd + e];
  }
  partial[threadIdx.x] = local;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {  // a fixed tree: deterministic
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    iterations[p] += 1;
    if (!(sqrt(partial[0]) > tol)) active[p] = false;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> kmeans(const at::Tensor& x_in, const at::Tensor& counts_in, int64_t k,
                                                      int64_t max_iters, double tol, int64_t seed, int64_t init) {
  const char* op = "kmeans";
  check_points(x_in, op);
  TORCH_CHECK(x_in.is_cuda(), "dse::", op, ": expected a CUDA tensor, got one on ", x_in.device());
  const int64_t P = x_in.size(0), M = x_in.size(1), d = x_in.size(2);
  TORCH_CHECK(counts_in.dim() == 1 && counts_in.size(0) == P && counts_in.scalar_type() == at::kLong, "dse::", op,
              ": counts must be an int64 tensor of shape (", P, ",), got ", counts_in.scalar_type(), " ",
              counts_in.sizes());
  TORCH_CHECK(k >= 1, "dse::", op, ": k must be >= 1, got ", k);
  TORCH_CHECK(max_iters >= 0, "dse::", op, ": max_iters must be >= 0, got ", max_iters);
  TORCH_CHECK(tol >= 0.0, "dse::", op, ": tol must be >= 0, got ", tol);
  TORCH_CHECK(init == 0 || init == 1, "dse::", op, ": init must be 0 (D^2 sampling) or 1 (D sampling), got ", init);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor counts = counts_in.to(x.device()).contiguous();
  const int64_t lo = counts.min().item<int64_t>(), hi = counts.max().item<int64_t>();  // argument check only
  TORCH_CHECK(lo >= k && hi <= M, "dse::", op, ": every problem needs between k = ", k, " and M = ", M,
              " points; counts range over [", lo, ", ", hi, "]");

  const auto dopts = x.options().dtype(at::kDouble);
  at::Tensor c = at::empty({P, k, d}, dopts), updated = at::empty({P, k, d}, dopts);
  at::Tensor dist2 = at::empty({P, M}, dopts);
  at::Tensor labels = at::full({P, M}, -1, x.options().dtype(at::kLong));
  at::Tensor iterations = at::zeros({P}, x.options().dtype(at::kLong));
  at::Tensor active = at::ones({P}, x.options().dtype(at::kBool));
  const auto stream = at::cuda::getCurrentCUDAStream();
  const unsigned int assign_blocks = blocks_for(P * M * kWarp);
  const dim3 update_grid(static_cast<unsigned int>(P), blocks_for(d));
  const size_t update_shared = static_cast<size_t>(k) * sizeof(int);
  TORCH_CHECK(update_shared <= 48 * 1024, "dse::", op, ": k = ", k, " clusters is more than the CUDA kernel supports");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_kmeans_cuda", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    seed_kernel<scalar_t><<<static_cast<unsigned int>(P), kSeedThreads, 0, stream>>>(
        xp, counts.const_data_ptr<int64_t>(), M, d, k, init, static_cast<uint64_t>(seed), c.data_ptr<double>(),
        dist2.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    for (int64_t it = 0; it < max_iters; ++it) {  // no host synchronisation: converged problems idle
      assign_kernel<scalar_t><<<assign_blocks, kThreads, 0, stream>>>(
          xp, counts.const_data_ptr<int64_t>(), c.const_data_ptr<double>(), active.const_data_ptr<bool>(), P, M, d,
          k, labels.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      update_kernel<scalar_t><<<update_grid, kThreads, update_shared, stream>>>(
          xp, counts.const_data_ptr<int64_t>(), labels.const_data_ptr<int64_t>(), c.const_data_ptr<double>(),
          active.const_data_ptr<bool>(), M, d, k, updated.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      converge_kernel<<<static_cast<unsigned int>(P), kThreads, 0, stream>>>(
          c.data_ptr<double>(), updated.const_data_ptr<double>(), active.data_ptr<bool>(),
          iterations.data_ptr<int64_t>(), k * d, tol);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    // Labels of the returned centroids, for every problem.
    assign_kernel<scalar_t><<<assign_blocks, kThreads, 0, stream>>>(
        xp, counts.const_data_ptr<int64_t>(), c.const_data_ptr<double>(), nullptr, P, M, d, k,
        labels.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {c.to(x.scalar_type()), labels, iterations};
}

TORCH_LIBRARY_IMPL(dse, CUDA, m) { m.impl("kmeans", &kmeans); }

}  // namespace dse::cuda
