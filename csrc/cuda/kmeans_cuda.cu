// dse::kmeans on the GPU (not differentiable: no backward). Arguments are checked
// first by common/kmeans_args.h, as on the CPU. Batched k-means: k-means++ seeding
// (the shared counter-based RNG of common/rng.h), then Lloyd iterations whose
// per-problem convergence flags stay on the device: the host launches max_iters
// rounds without synchronising, and a converged problem's kernels do nothing.
// Distances are measured directly in float64. Ties and rounding follow
// common/kmeans_rules.h, the rules the CPU kernel (csrc/cpu/kmeans_cpu.cpp) follows:
// the blocked cumulative search of the seeding (never a zero-weight point while
// another weighs more), nearest centroid with ties to the lowest index, centroid sums
// in segments of kUpdateSegment points added in a fixed order (two passes through a
// workspace: no floating-point atomics, deterministic, and the same bits as the CPU's
// sums) times 1 / n. An empty cluster keeps its centroid, a problem stops after the
// first update whose centroid shift is <= tol, labels are re-assigned to the
// returned centroids, padding gets -1.
#include <torch/library.h>

#include <cmath>

#include "common/kmeans_args.h"
#include "common/kmeans_rules.h"
#include "common/rng.h"
#include "common/segments.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/value_checks.cuh"

namespace dse::cuda {
namespace {

// ---------------------------------------------------------------- seeding
// Two kernels per centroid j: seed_pick_kernel draws it (one block per problem: its
// thread 0 runs seed_pick over the block totals, then the block copies the point),
// seed_distance_kernel updates every point's squared distance to the nearest chosen
// centroid (one thread per point, kSeedBlock threads per block: one block per block
// of the cumulative rule) and writes the block's total weight.

constexpr int kPickThreads = 128;

// chosen[p] = the point draw j picks; c[p, j] = that point in float64.
template <typename scalar_t>
__global__ void seed_pick_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ counts, int64_t M,
                                 int64_t d, int64_t k, int64_t init, uint64_t seed, int64_t j,
                                 const double* __restrict__ dist2, const double* __restrict__ block_totals,
                                 int64_t blocks_per_problem, int64_t* __restrict__ chosen, double* __restrict__ c) {
  const int64_t p = blockIdx.x;
  const int64_t n = counts[p];
  __shared__ int64_t pick;
  if (threadIdx.x == 0) {
    const double u = uniform01(seed, static_cast<uint64_t>(p), static_cast<uint64_t>(j));
    pick = j == 0 ? seed_uniform_pick(u, n)
                  : seed_pick(dist2 + p * M, n, init, block_totals + p * blocks_per_problem, u);
    chosen[p] = pick;
  }
  __syncthreads();
  const scalar_t* row = x + (p * M + pick) * d;
  double* cj = c + (p * k + j) * d;
  for (int64_t t = threadIdx.x; t < d; t += blockDim.x) cj[t] = static_cast<double>(row[t]);
}

// dist2[p, i] = min(dist2[p, i], |x_i - x_chosen[p]|^2) (first: no min), then the block's
// total weight (seed_block_total, the sequential sum of its weights).
template <typename scalar_t>
__global__ void seed_distance_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ counts, int64_t P,
                                     int64_t M, int64_t d, int64_t init, bool first,
                                     const int64_t* __restrict__ chosen, int64_t blocks_per_problem,
                                     double* __restrict__ dist2, double* __restrict__ block_totals) {
  const int64_t p = blockIdx.x / blocks_per_problem, b = blockIdx.x % blocks_per_problem;
  const int64_t n = counts[p];
  if (b >= seed_block_count(n)) return;  // uniform within the block
  const Segment s = segment_bounds(b, n, kSeedBlock);
  const int64_t i = s.begin + threadIdx.x;
  double* w = dist2 + p * M;
  if (i < s.end) {
    const double v = squared_distance_f64(x + (p * M + i) * d, x + (p * M + chosen[p]) * d, d);
    w[i] = first || v < w[i] ? v : w[i];
  }
  __syncthreads();  // the block's writes to w are visible to its thread 0
  if (threadIdx.x == 0) block_totals[p * blocks_per_problem + b] = seed_block_total(w, n, init, b);
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
    if (j == 0 || nearer(sq, best_sq)) {  // every lane holds the same sum: the same decision
      best_sq = sq;
      best = j;
    }
  }
  if (lane == 0) labels[e] = best;
}

// Centroid update (common/kmeans_rules.h): per cluster, the float64 sum of its members
// in segments of kUpdateSegment points, times 1 / n_j; an empty cluster keeps its
// centroid. Block (p, s, t-tile) sums segment s of problem p for a tile of columns:
// thread t walks the segment's points in order and adds x[i, t] into entry (labels[i], t)
// of its segment's sums, which no other thread touches (no atomics on floats). The
// block also counts the segment's members per cluster (integer shared-memory atomics:
// exact). With one segment per problem (M <= kUpdateSegment) the block finishes the
// update itself; otherwise it writes the segment's sums and counts to a workspace and
// update_finish_kernel adds them in segment order. Converged problems are skipped (their
// `updated` is never read).
constexpr int kUpdateThreads = 128;

template <typename scalar_t>
__global__ void update_segment_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ counts,
                                      const int64_t* __restrict__ labels, const double* __restrict__ c,
                                      const bool* __restrict__ active, int64_t M, int64_t d, int64_t k,
                                      int64_t segments, double* __restrict__ sums, int* __restrict__ members_out,
                                      double* __restrict__ updated) {
  extern __shared__ int members[];  // (k,)
  const int64_t p = blockIdx.x / segments, s = blockIdx.x % segments;
  const int64_t n = counts[p];
  if (!active[p] || s >= segment_count(n, kUpdateSegment)) return;  // uniform within the block
  const Segment seg = segment_bounds(s, n, kUpdateSegment);
  const int64_t* lp = labels + p * M;
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) members[j] = 0;
  __syncthreads();
  for (int64_t i = seg.begin + threadIdx.x; i < seg.end; i += blockDim.x) atomicAdd(&members[lp[i]], 1);
  __syncthreads();
  const bool finish = segments == 1;
  if (!finish && blockIdx.y == 0)
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) members_out[(p * segments + s) * k + j] = members[j];
  const int64_t t = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (t >= d) return;
  double* acc = (finish ? updated + p * k * d : sums + (p * segments + s) * k * d) + t;  // entry (j, t) at acc[j * d]
  for (int64_t j = 0; j < k; ++j) acc[j * d] = 0.0;
  const scalar_t* xp = x + p * M * d + t;
  for (int64_t i = seg.begin; i < seg.end; ++i) acc[lp[i] * d] += static_cast<double>(xp[i * d]);
  if (!finish) return;
  const double* cp = c + p * k * d + t;
  for (int64_t j = 0; j < k; ++j)
    acc[j * d] = members[j] > 0 ? centroid_from_sum(acc[j * d], inverse_count(members[j])) : cp[j * d];
}

// updated[p, j, t] from the segments' sums and counts, added in segment order.
__global__ void update_finish_kernel(const int64_t* __restrict__ counts, const double* __restrict__ c,
                                     const bool* __restrict__ active, int64_t P, int64_t d, int64_t k,
                                     int64_t segments, const double* __restrict__ sums,
                                     const int* __restrict__ members_in, double* __restrict__ updated) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= P * k * d) return;
  const int64_t t = e % d, j = (e / d) % k, p = e / (d * k);
  if (!active[p]) return;
  const int64_t used = segment_count(counts[p], kUpdateSegment);
  int64_t members = 0;
  double sum = 0.0;
  for (int64_t s = 0; s < used; ++s) {
    members += members_in[(p * segments + s) * k + j];
    sum += sums[((p * segments + s) * k + j) * d + t];
  }
  updated[e] = members > 0 ? centroid_from_sum(sum, inverse_count(members)) : c[e];
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
  const KmeansArgs in = check_kmeans_args(x_in, counts_in, k, max_iters, tol, init, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(in.x.device());
  enforce_on_device(in.pending);
  const at::Tensor& x = in.x;
  const at::Tensor& counts = in.counts;  // on x's device, values checked (common/kmeans_args.h)
  const int64_t P = in.P, M = in.M, d = in.d;

  const auto dopts = x.options().dtype(at::kDouble);
  at::Tensor c = at::empty({P, k, d}, dopts), updated = at::empty({P, k, d}, dopts);
  at::Tensor dist2 = at::empty({P, M}, dopts);
  at::Tensor labels = at::full({P, M}, -1, x.options().dtype(at::kLong));
  at::Tensor iterations = at::zeros({P}, x.options().dtype(at::kLong));
  at::Tensor active = at::ones({P}, x.options().dtype(at::kBool));
  const auto stream = at::cuda::getCurrentCUDAStream();
  const unsigned int assign_blocks = blocks_for(P * M * kWarp);
  // Seeding: one block of kSeedBlock threads per block of the cumulative rule.
  const int64_t seed_blocks = seed_block_count(M);
  at::Tensor block_totals = at::empty({P, seed_blocks}, dopts);
  at::Tensor chosen = at::empty({P}, x.options().dtype(at::kLong));
  // Update: P * segments blocks of column tiles; the workspace only with several segments.
  const int64_t segments = segment_count(M, kUpdateSegment);
  at::Tensor segment_sums, segment_members;
  if (segments > 1) {
    segment_sums = at::empty({P, segments, k, d}, dopts);
    segment_members = at::empty({P, segments, k}, x.options().dtype(at::kInt));
  }
  const dim3 update_grid(static_cast<unsigned int>(P * segments), blocks_for(d, kUpdateThreads));
  const size_t update_shared = static_cast<size_t>(k) * sizeof(int);
  TORCH_CHECK(update_shared <= 48 * 1024, "dse::kmeans: k = ", k, " clusters is more than the CUDA kernel supports (",
              48 * 1024 / sizeof(int), " at most); run k-means with that many clusters on the CPU");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_kmeans_cuda", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const int64_t* cp = counts.const_data_ptr<int64_t>();
    for (int64_t j = 0; j < k; ++j) {  // k-means++: draw centroid j, then (but for the last) the distances to it
      seed_pick_kernel<scalar_t><<<static_cast<unsigned int>(P), kPickThreads, 0, stream>>>(
          xp, cp, M, d, k, init, static_cast<uint64_t>(seed), j, dist2.const_data_ptr<double>(),
          block_totals.const_data_ptr<double>(), seed_blocks, chosen.data_ptr<int64_t>(), c.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (j + 1 == k) break;
      seed_distance_kernel<scalar_t><<<static_cast<unsigned int>(P * seed_blocks), static_cast<unsigned int>(kSeedBlock), 0,
                                            stream>>>(
          xp, cp, P, M, d, init, j == 0, chosen.const_data_ptr<int64_t>(), seed_blocks, dist2.data_ptr<double>(),
          block_totals.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    for (int64_t it = 0; it < max_iters; ++it) {  // no host synchronisation: converged problems idle
      assign_kernel<scalar_t><<<assign_blocks, kThreads, 0, stream>>>(
          xp, cp, c.const_data_ptr<double>(), active.const_data_ptr<bool>(), P, M, d, k, labels.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      update_segment_kernel<scalar_t><<<update_grid, kUpdateThreads, update_shared, stream>>>(
          xp, cp, labels.const_data_ptr<int64_t>(), c.const_data_ptr<double>(), active.const_data_ptr<bool>(), M, d,
          k, segments, segments > 1 ? segment_sums.data_ptr<double>() : nullptr,
          segments > 1 ? segment_members.data_ptr<int>() : nullptr, updated.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (segments > 1) {
        update_finish_kernel<<<blocks_for(P * k * d), kThreads, 0, stream>>>(
            cp, c.const_data_ptr<double>(), active.const_data_ptr<bool>(), P, d, k, segments,
            segment_sums.const_data_ptr<double>(), segment_members.const_data_ptr<int>(), updated.data_ptr<double>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      converge_kernel<<<static_cast<unsigned int>(P), kThreads, 0, stream>>>(
          c.data_ptr<double>(), updated.const_data_ptr<double>(), active.data_ptr<bool>(),
          iterations.data_ptr<int64_t>(), k * d, tol);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    // Labels of the returned centroids, for every problem.
    assign_kernel<scalar_t><<<assign_blocks, kThreads, 0, stream>>>(xp, cp, c.const_data_ptr<double>(), nullptr, P,
                                                                    M, d, k, labels.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {c.to(x.scalar_type()), labels, iterations};
}

TORCH_LIBRARY_IMPL(dse, CUDA, m) { m.impl("kmeans", &kmeans); }

}  // namespace dse::cuda
