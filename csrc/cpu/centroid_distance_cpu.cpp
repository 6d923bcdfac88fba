// Distance from each point to the nearest centroid other than its own (CPU).
// The candidate is chosen from a GEMM per problem; its distance is then
// measured directly in float64 so that it carries no cancellation error.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/checks.h"
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

template <typename scalar_t>
double squared_norm(const scalar_t* a, int64_t d) {
  double s = 0.0;
  for (int64_t t = 0; t < d; ++t) s += static_cast<double>(a[t]) * static_cast<double>(a[t]);
  return s;
}

}  // namespace

at::Tensor nearest_other_centroid_distance(const at::Tensor& x_in, const at::Tensor& centroids_in,
                                           const at::Tensor& labels_in, const std::optional<at::Tensor>& valid_in) {
  const char* op = "nearest_other_centroid_distance";
  check_points(x_in, op);
  check_cpu(x_in, op);
  check_points(centroids_in, op, "centroids");
  check_labels(labels_in, x_in, op);
  const int64_t P = x_in.size(0), M = x_in.size(1), d = x_in.size(2), k = centroids_in.size(1);
  TORCH_CHECK(centroids_in.size(0) == P && centroids_in.size(2) == d, "dse::", op,
              ": centroids must have shape (P, k, d) with P = ", P, " and d = ", d, ", got ", centroids_in.sizes());
  TORCH_CHECK(centroids_in.scalar_type() == x_in.scalar_type(), "dse::", op, ": centroids dtype ",
              centroids_in.scalar_type(), " differs from x dtype ", x_in.scalar_type());
  check_cpu(centroids_in, op);
  at::Tensor valid;
  if (valid_in.has_value()) {
    valid = *valid_in;
    check_cpu(valid, op);
    TORCH_CHECK(valid.dim() == 2 && valid.size(0) == P && valid.size(1) == k && valid.scalar_type() == at::kBool,
                "dse::", op, ": valid must be a bool tensor of shape (", P, ", ", k, "), got ", valid.scalar_type(),
                " ", valid.sizes());
  } else {
    valid = at::ones({P, k}, x_in.options().dtype(at::kBool));
  }
  const at::Tensor labels = labels_in.contiguous();
  check_label_range(labels, k, op);
  const at::Tensor x = x_in.contiguous(), c = centroids_in.contiguous();
  const at::Tensor valid_c = valid.contiguous();

  at::Tensor out = at::zeros({P, M}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_nearest_other_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* cp = c.const_data_ptr<scalar_t>();
    const int64_t* lp = labels.const_data_ptr<int64_t>();
    const bool* vp = valid_c.const_data_ptr<bool>();
    scalar_t* op_out = out.data_ptr<scalar_t>();
    // Candidates from x . c (a GEMM per problem): |x - c|^2 - |x|^2 = |c|^2 - 2 x . c.
    std::vector<scalar_t> dots(P * M * k);
    std::vector<double> c_sq(P * k);
    at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        gemm_abt(M, k, d, xp + p * M * d, d, cp + p * k * d, d, dots.data() + p * M * k, k);
        for (int64_t j = 0; j < k; ++j) c_sq[p * k + j] = squared_norm(cp + (p * k + j) * d, d);
      }
    });
    at::parallel_for(0, P * M, 256, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t own = lp[i], p = i / M;
        if (own < 0) continue;
        const scalar_t* row = dots.data() + i * k;
        int64_t best = -1;
        double best_val = std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < k; ++j) {
          if (j == own || !vp[p * k + j]) continue;
          const double v = c_sq[p * k + j] - 2.0 * static_cast<double>(row[j]);
          if (v < best_val) {
            best_val = v;
            best = j;
          }
        }
        if (best >= 0)  // the chosen centroid's distance, measured directly
          op_out[i] = static_cast<scalar_t>(std::sqrt(squared_distance(xp + i * d, cp + (p * k + best) * d, d)));
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(dse, CPU, m) { m.impl("nearest_other_centroid_distance", &nearest_other_centroid_distance); }

}  // namespace dse::cpu
