// Distance from each point to the nearest centroid other than its own (CPU).
// The candidate is chosen with a batched GEMM; its distance is then measured
// directly in float64 so that it carries no cancellation error.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <limits>

#include "common/checks.h"
#include "cpu/kernels.h"

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
    TORCH_CHECK(valid.dim() == 2 && valid.size(0) == P && valid.size(1) == k && valid.scalar_type() == at::kBool,
                "dse::", op, ": valid must be a bool tensor of shape (", P, ", ", k, "), got ", valid.scalar_type(),
                " ", valid.sizes());
  } else {
    valid = at::ones({P, k}, x_in.options().dtype(at::kBool));
  }
  const at::Tensor& labels = labels_in;
  check_label_range(labels, k, op);
  const at::Tensor x = x_in.contiguous(), c = centroids_in.contiguous();

  // Squared distance up to |x|^2, with the own and the missing centroids excluded.
  at::Tensor score = (c.square().sum(2).unsqueeze(1) - 2.0 * at::bmm(x, c.transpose(1, 2))).to(at::kDouble);
  const at::Tensor ids = at::arange(k, labels.options());
  const at::Tensor excluded = (labels.unsqueeze(2) == ids).logical_or(valid.logical_not().unsqueeze(1));
  score.masked_fill_(excluded, std::numeric_limits<double>::infinity());
  const auto [best_score, best] = score.min(2);  // (P, M)
  const at::Tensor keep = labels.ge(0).logical_and(best_score.isfinite()).contiguous();
  const at::Tensor best_c = best.contiguous();
  at::Tensor out = at::zeros({P, M}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_nearest_other_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* cp = c.const_data_ptr<scalar_t>();
    const int64_t* bp = best_c.const_data_ptr<int64_t>();
    const bool* kp = keep.const_data_ptr<bool>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, P * M, 256, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        if (!kp[i]) continue;
        const scalar_t* xi = xp + i * d;
        const scalar_t* ci = cp + ((i / M) * k + bp[i]) * d;
        op[i] = static_cast<scalar_t>(std::sqrt(squared_distance(xi, ci, d)));
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(dse, CPU, m) { m.impl("nearest_other_centroid_distance", &nearest_other_centroid_distance); }

}  // namespace dse::cpu
