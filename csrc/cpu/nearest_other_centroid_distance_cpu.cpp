// dse::nearest_other_centroid_distance and its backward on the CPU: the distance
// from each point to the nearest centroid other than its own, and its gradient with
// respect to the points and the centroids. The candidate is chosen from a GEMM per
// problem; its distance is then measured directly in float64 so that it carries no
// cancellation error.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/nearest_other_centroid_distance_args.h"
#include "cpu/output_cache.h"
#include "cpu/kernels.h"
#include "cpu/lapack.h"

namespace dse::cpu {
namespace {

// |a - b|^2 accumulated in float64 over four independent partial sums.
template <typename scalar_t>
double squared_distance(const scalar_t* a, const scalar_t* b, int64_t d) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t t = 0;
  for (; t + 4 <= d; t += 4)
    for (int u = 0; u < 4; ++u) {
      const double diff = static_cast<double>(a[t + u]) - static_cast<double>(b[t + u]);
      acc[u] += diff * diff;
    }
  for (; t < d; ++t) {
    const double diff = static_cast<double>(a[t]) - static_cast<double>(b[t]);
    acc[0] += diff * diff;
  }
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// out = s * (a - b), each entry computed in float64 and rounded once. The restrict
// qualifiers let the compiler vectorize the loop (out never overlaps the inputs).
template <typename scalar_t>
void scaled_difference(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, double s, int64_t d,
                       scalar_t* __restrict__ out) {
  for (int64_t t = 0; t < d; ++t)
    out[t] = static_cast<scalar_t>(s * (static_cast<double>(a[t]) - static_cast<double>(b[t])));
}

template <typename scalar_t>
double squared_norm(const scalar_t* a, int64_t d) {
  double s = 0.0;
  for (int64_t t = 0; t < d; ++t) s += static_cast<double>(a[t]) * static_cast<double>(a[t]);
  return s;
}

// For every point, the nearest valid centroid other than its own (-1: none, or an
// ignored point), chosen from x . c (a GEMM per problem): |x - c|^2 - |x|^2 = |c|^2 - 2 x . c.
template <typename scalar_t>
std::vector<int64_t> nearest_other_choice(const NearestArgs& in) {
  const int64_t P = in.P, M = in.M, d = in.d, k = in.k;
  const scalar_t* xp = in.x.const_data_ptr<scalar_t>();
  const scalar_t* cp = in.c.const_data_ptr<scalar_t>();
  const int64_t* lp = in.labels.const_data_ptr<int64_t>();
  const bool* vp = in.valid.defined() ? in.valid.const_data_ptr<bool>() : nullptr;
  std::vector<scalar_t> dots(P * M * k);
  std::vector<double> c_sq(P * k);
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      gemm_abt(M, k, d, xp + p * M * d, d, cp + p * k * d, d, dots.data() + p * M * k, k);
      for (int64_t j = 0; j < k; ++j) c_sq[p * k + j] = squared_norm(cp + (p * k + j) * d, d);
    }
  });
  std::vector<int64_t> best(P * M, -1);
  at::parallel_for(0, P * M, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t own = lp[i], p = i / M;
      if (own < 0) continue;
      const scalar_t* row = dots.data() + i * k;
      double best_val = std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < k; ++j) {
        if (j == own || (vp != nullptr && !vp[p * k + j])) continue;
        const double v = c_sq[p * k + j] - 2.0 * static_cast<double>(row[j]);
        if (v < best_val) {
          best_val = v;
          best[i] = j;
        }
      }
    }
  });
  return best;
}

}  // namespace

at::Tensor nearest_other_centroid_distance(const at::Tensor& x_in, const at::Tensor& centroids_in,
                                           const at::Tensor& labels_in, const std::optional<at::Tensor>& valid_in) {
  const NearestArgs in = check_nearest_args(x_in, centroids_in, labels_in, valid_in, c10::DeviceType::CPU);
  at::Tensor out = at::zeros({in.P, in.M}, in.x.options());
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "dse_nearest_other_cpu", [&] {
    const std::vector<int64_t> best = nearest_other_choice<scalar_t>(in);
    const scalar_t* xp = in.x.const_data_ptr<scalar_t>();
    const scalar_t* cp = in.c.const_data_ptr<scalar_t>();
    scalar_t* op_out = out.data_ptr<scalar_t>();
    const int64_t M = in.M, d = in.d, k = in.k;
    at::parallel_for(0, in.P * M, 256, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        if (best[i] >= 0)  // the chosen centroid's distance, measured directly
          op_out[i] = static_cast<scalar_t>(std::sqrt(squared_distance(xp + i * d, cp + ((i / M) * k + best[i]) * d, d)));
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> nearest_other_centroid_distance_backward(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& centroids_in, const at::Tensor& labels_in,
    const std::optional<at::Tensor>& valid_in) {
  const NearestBackwardArgs in =
      check_nearest_backward_args(grad_in, x_in, centroids_in, labels_in, valid_in, c10::DeviceType::CPU);
  const at::Tensor& grad = in.grad;
  at::Tensor grad_x = empty_filled_output_like(in.x);  // every row written below
  at::Tensor target = at::full({in.P * in.M}, in.P * in.k, in.x.options().dtype(at::kLong));  // dump row P * k
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "dse_nearest_other_backward_cpu", [&] {
    const std::vector<int64_t> best = nearest_other_choice<scalar_t>(in);
    const scalar_t* xp = in.x.const_data_ptr<scalar_t>();
    const scalar_t* cp = in.c.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    int64_t* tp = target.data_ptr<int64_t>();
    const int64_t M = in.M, d = in.d, k = in.k;
    at::parallel_for(0, in.P * M, 256, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        if (best[i] < 0) {  // ignored, or no other centroid: no gradient
          std::fill(gx + i * d, gx + (i + 1) * d, scalar_t(0));
          continue;
        }
        const int64_t centre = (i / M) * k + best[i];
        const scalar_t* xi = xp + i * d;
        const scalar_t* ci = cp + centre * d;
        const double dist = std::sqrt(squared_distance(xi, ci, d));
        if (!(dist > 0.0)) {  // on the centroid: the subgradient 0
          std::fill(gx + i * d, gx + (i + 1) * d, scalar_t(0));
          continue;
        }
        scaled_difference(xi, ci, static_cast<double>(gp[i]) / dist, d, gx + i * d);
        tp[i] = centre;
      }
    });
  });
  // Each centroid receives minus the gradients of the points that chose it.
  at::Tensor grad_c = at::zeros({in.P * in.k + 1, in.d}, in.x.options())
                          .index_add_(0, target, grad_x.view({in.P * in.M, in.d}), -1)
                          .narrow(0, 0, in.P * in.k)
                          .view({in.P, in.k, in.d});
  return {grad_x, grad_c};
}

TORCH_LIBRARY_IMPL(dse, CPU, m) {
  m.impl("nearest_other_centroid_distance", &nearest_other_centroid_distance);
  m.impl("nearest_other_centroid_distance_backward", &nearest_other_centroid_distance_backward);
}

}  // namespace dse::cpu
