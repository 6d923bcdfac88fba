// dse::nearest_other_centroid_distance and its backward on the GPU: the distance
// from each point to the nearest centroid other than its own, and its gradient.
// Arguments are checked first by common/nearest_other_centroid_distance_args.h, as
// on the CPU. One thread per point measures its distance to every
// centroid directly in float64 (no GEMM cancellation) and keeps the nearest
// valid one other than its own (ties to the lowest index). The backward
// recomputes that choice; each centroid's gradient is a fixed-order segmented sum
// (common/segments.h): segments of kGradSegment points summed in point order by one
// thread per (segment, centroid entry), then the segment sums added in segment order
// (two passes through a workspace when a problem has several segments). No atomics:
// deterministic.
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "common/nearest_other_centroid_distance_args.h"
#include "common/segments.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/value_checks.cuh"

namespace dse::cuda {
namespace {

template <typename scalar_t>
__device__ double squared_distance(const scalar_t* a, const scalar_t* b, int64_t d) {
  double acc = 0.0;
  for (int64_t t = 0; t < d; ++t) {
    const double diff = static_cast<double>(a[t]) - static_cast<double>(b[t]);
    acc += diff * diff;
  }
  return acc;
}

// best[i]: the chosen centroid of point i (-1: ignored point or no other valid centroid);
// dist[i]: its distance (0 when best[i] < 0).
template <typename scalar_t>
__global__ void nearest_other_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ c,
                                     const int64_t* __restrict__ labels, const bool* __restrict__ valid, int64_t P,
                                     int64_t M, int64_t d, int64_t k, int64_t* __restrict__ best,
                                     double* __restrict__ dist) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= P * M) return;
  const int64_t own = labels[i], p = i / M;
  int64_t choice = -1;
  double best_sq = std::numeric_limits<double>::infinity();
  if (own >= 0) {
    for (int64_t j = 0; j < k; ++j) {
      if (j == own || (valid != nullptr && !valid[p * k + j])) continue;
      const double sq = squared_distance(x + i * d, c + (p * k + j) * d, d);
      if (sq < best_sq) {
        best_sq = sq;
        choice = j;
      }
    }
  }
  best[i] = choice;
  dist[i] = choice >= 0 ? sqrt(best_sq) : 0.0;
}

// grad_x[i] = g_i (x_i - c) / |x_i - c| for the chosen centroid c (0 on the centroid).
template <typename scalar_t>
__global__ void nearest_other_grad_x_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ c,
                                            const scalar_t* __restrict__ grad, const int64_t* __restrict__ best,
                                            const double* __restrict__ dist, int64_t P, int64_t M, int64_t d,
                                            int64_t k, scalar_t* __restrict__ grad_x) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= P * M * d) return;
  const int64_t i = e / d, t = e % d;
  double value = 0.0;
  if (best[i] >= 0 && dist[i] > 0.0) {
    const scalar_t* ci = c + ((i / M) * k + best[i]) * d;
    value = static_cast<double>(grad[i]) / dist[i] * (static_cast<double>(x[e]) - static_cast<double>(ci[t]));
  }
  grad_x[e] = static_cast<scalar_t>(value);
}

// grad_c[p, j, t] = -sum over the points of problem p that chose j of grad_x[i, t], in
// segments of kGradSegment points (common/segments.h).
//   One segment (M <= kGradSegment): one thread per entry (p, j, t) walks the points in
//   order (nearest_other_grad_c_kernel).
//   Several: block (p, s, t-tile) sums segment s; thread t walks it in point order and
//   subtracts grad_x[i, t] from entry (best[i], t) of the segment's sums in a workspace
//   (P, segments, k, d), which no other thread touches; then
//   nearest_other_grad_c_finish_kernel adds the segment sums in segment order.
constexpr int64_t kGradSegment = 512;
constexpr int kGradThreads = 128;

template <typename scalar_t>
__global__ void nearest_other_grad_c_kernel(const scalar_t* __restrict__ grad_x, const int64_t* __restrict__ best,
                                            int64_t P, int64_t M, int64_t d, int64_t k,
                                            scalar_t* __restrict__ grad_c) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= P * k * d) return;
  const int64_t t = e % d, j = (e / d) % k, p = e / (d * k);
  double acc = 0.0;
  for (int64_t i = p * M; i < (p + 1) * M; ++i)
    if (best[i] == j) acc -= static_cast<double>(grad_x[i * d + t]);
  grad_c[e] = static_cast<scalar_t>(acc);
}

template <typename scalar_t>
__global__ void nearest_other_grad_c_segment_kernel(const scalar_t* __restrict__ grad_x,
                                                    const int64_t* __restrict__ best, int64_t M, int64_t d,
                                                    int64_t k, int64_t segments, double* __restrict__ sums) {
  const int64_t p = blockIdx.x / segments, s = blockIdx.x % segments;
  const int64_t t = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (t >= d) return;
  const Segment seg = segment_bounds(s, M, kGradSegment);
  double* acc = sums + (p * segments + s) * k * d + t;  // entry (j, t) at acc[j * d]
  for (int64_t j = 0; j < k; ++j) acc[j * d] = 0.0;
  for (int64_t i = seg.begin; i < seg.end; ++i) {
    const int64_t j = best[p * M + i];
    if (j >= 0) acc[j * d] -= static_cast<double>(grad_x[(p * M + i) * d + t]);
  }
}

template <typename scalar_t>
__global__ void nearest_other_grad_c_finish_kernel(const double* __restrict__ sums, int64_t P, int64_t d, int64_t k,
                                                   int64_t segments, scalar_t* __restrict__ grad_c) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= P * k * d) return;
  const int64_t p = e / (k * d), jt = e % (k * d);
  double acc = 0.0;
  for (int64_t s = 0; s < segments; ++s) acc += sums[(p * segments + s) * k * d + jt];
  grad_c[e] = static_cast<scalar_t>(acc);
}

// Launches nearest_other_kernel; returns (best (P, M) int64, dist (P, M) float64).
std::tuple<at::Tensor, at::Tensor> choose(const NearestArgs& in) {
  at::Tensor best = at::empty({in.P, in.M}, in.labels.options());
  at::Tensor dist = at::empty({in.P, in.M}, in.x.options().dtype(at::kDouble));
  if (in.P * in.M == 0) return {best, dist};
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "dse_nearest_other_cuda", [&] {
    nearest_other_kernel<scalar_t><<<blocks_for(in.P * in.M), kThreads, 0, stream>>>(
        in.x.const_data_ptr<scalar_t>(), in.c.const_data_ptr<scalar_t>(), in.labels.const_data_ptr<int64_t>(),
        in.valid.defined() ? in.valid.const_data_ptr<bool>() : nullptr, in.P, in.M, in.d, in.k,
        best.data_ptr<int64_t>(), dist.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {best, dist};
}

}  // namespace

at::Tensor nearest_other_centroid_distance(const at::Tensor& x, const at::Tensor& centroids, const at::Tensor& labels,
                                           const std::optional<at::Tensor>& valid) {
  const NearestArgs in = check_nearest_args(x, centroids, labels, valid, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(in.x.device());
  enforce_on_device(in.pending);
  return std::get<1>(choose(in)).to(in.x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> nearest_other_centroid_distance_backward(
    const at::Tensor& grad_in, const at::Tensor& x, const at::Tensor& centroids, const at::Tensor& labels,
    const std::optional<at::Tensor>& valid) {
  const NearestBackwardArgs in =
      check_nearest_backward_args(grad_in, x, centroids, labels, valid, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(in.x.device());
  enforce_on_device(in.pending);
  const at::Tensor& grad = in.grad;
  const auto [best, dist] = choose(in);
  at::Tensor grad_x = at::empty_like(in.x), grad_c = at::empty_like(in.c);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "dse_nearest_other_backward_cuda", [&] {
    if (in.x.numel() > 0) {
      nearest_other_grad_x_kernel<scalar_t><<<blocks_for(in.x.numel()), kThreads, 0, stream>>>(
          in.x.const_data_ptr<scalar_t>(), in.c.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
          best.const_data_ptr<int64_t>(), dist.const_data_ptr<double>(), in.P, in.M, in.d, in.k,
          grad_x.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (in.c.numel() > 0) {
      const int64_t segments = segment_count(in.M, kGradSegment);
      if (segments == 1) {
        nearest_other_grad_c_kernel<scalar_t><<<blocks_for(in.c.numel()), kThreads, 0, stream>>>(
            grad_x.const_data_ptr<scalar_t>(), best.const_data_ptr<int64_t>(), in.P, in.M, in.d, in.k,
            grad_c.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else {
        at::Tensor sums = at::empty({in.P, segments, in.k, in.d}, in.x.options().dtype(at::kDouble));
        const dim3 grid(static_cast<unsigned int>(in.P * segments), blocks_for(in.d, kGradThreads));
        nearest_other_grad_c_segment_kernel<scalar_t><<<grid, kGradThreads, 0, stream>>>(
            grad_x.const_data_ptr<scalar_t>(), best.const_data_ptr<int64_t>(), in.M, in.d, in.k, segments,
            sums.data_ptr<double>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        nearest_other_grad_c_finish_kernel<scalar_t><<<blocks_for(in.c.numel()), kThreads, 0, stream>>>(
            sums.const_data_ptr<double>(), in.P, in.d, in.k, segments, grad_c.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  });
  return {grad_x, grad_c};
}

TORCH_LIBRARY_IMPL(dse, CUDA, m) {
  m.impl("nearest_other_centroid_distance", &nearest_other_centroid_distance);
  m.impl("nearest_other_centroid_distance_backward", &nearest_other_centroid_distance_backward);
}

}  // namespace dse::cuda
