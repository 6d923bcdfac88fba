// Batched k-means on the CPU.
//
// Seeding runs one problem per thread; each Lloyd iteration runs on all P
// problems at once (a batched distance GEMM, a fused argmin, one index_add for
// the centroid sums). Every problem keeps its own convergence flag and freezes
// once its centroid shift is <= tol, so its result does not depend on the other
// problems in the batch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/checks.h"
#include "common/rng.h"
#include "cpu/kernels.h"

namespace dse::cpu {
namespace {

// Nearest centroid of every point: x (P, M, d), c (P, k, d) -> (P, M) int64.
// Ties go to the lowest cluster index.
at::Tensor assign(const at::Tensor& x, const at::Tensor& c) {
  const int64_t P = x.size(0), M = x.size(1), k = c.size(1);
  const at::Tensor dots = at::bmm(x, c.transpose(1, 2)).contiguous();  // (P, M, k)
  const at::Tensor c_sq = c.to(at::kDouble).square().sum(2).contiguous();  // (P, k)
  at::Tensor labels = at::empty({P, M}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_kmeans_assign", [&] {
    const scalar_t* dp = dots.const_data_ptr<scalar_t>();
    const double* cp = c_sq.const_data_ptr<double>();
    int64_t* lp = labels.data_ptr<int64_t>();
    at::parallel_for(0, P * M, 2048, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* row = dp + i * k;
        const double* cn = cp + (i / M) * k;
        int64_t best = 0;
        double best_val = cn[0] - 2.0 * static_cast<double>(row[0]);  // |x - c|^2 - |x|^2
        for (int64_t j = 1; j < k; ++j) {
          const double v = cn[j] - 2.0 * static_cast<double>(row[j]);
          if (v < best_val) {
            best_val = v;
            best = j;
          }
        }
        lp[i] = best;
      }
    });
  });
  return labels;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> kmeans(const at::Tensor& x_in, const at::Tensor& counts_in, int64_t k,
                                                      int64_t max_iters, double tol, int64_t seed, int64_t init) {
  check_points(x_in, "kmeans");
  check_cpu(x_in, "kmeans");
  const int64_t P = x_in.size(0), M = x_in.size(1), d = x_in.size(2);
  TORCH_CHECK(counts_in.dim() == 1 && counts_in.size(0) == P, "dse::kmeans: counts must have shape (", P,
              ",), got ", counts_in.sizes());
  TORCH_CHECK(counts_in.scalar_type() == at::kLong, "dse::kmeans: counts must be int64");
  check_cpu(counts_in, "kmeans");
  TORCH_CHECK(k >= 1, "dse::kmeans: k must be >= 1, got ", k);
  TORCH_CHECK(max_iters >= 0, "dse::kmeans: max_iters must be >= 0, got ", max_iters);
  TORCH_CHECK(tol >= 0.0, "dse::kmeans: tol must be >= 0, got ", tol);
  TORCH_CHECK(init == 0 || init == 1, "dse::kmeans: init must be 0 (D^2 sampling) or 1 (D sampling), got ", init);

  const at::Tensor x = x_in.contiguous();
  const at::Tensor counts = counts_in.contiguous();
  const int64_t* cnt = counts.const_data_ptr<int64_t>();
  for (int64_t p = 0; p < P; ++p)
    TORCH_CHECK(cnt[p] >= k && cnt[p] <= M, "dse::kmeans: problem ", p, " has ", cnt[p],
                " points; need between k = ", k, " and M = ", M);
  const auto long_opts = x.options().dtype(at::kLong);
  const at::Tensor valid = at::arange(M, long_opts).unsqueeze(0) < counts.unsqueeze(1);  // (P, M)

  // ---- k-means++ seeding, one problem per task (its points stay in cache for all k rounds).
  at::Tensor centroids = at::empty({P, k, d}, x.options());
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = cnt[p];
      const at::Tensor xp = x.select(0, p).narrow(0, 0, n);
      const at::Tensor xp_sq = xp.square().sum(1).to(at::kDouble);
      at::Tensor cp = centroids.select(0, p);
      // |x - c|^2 in float64 from a matrix-vector product, clamped at 0.
      auto sq_dist = [&](int64_t i) {
        const at::Tensor c = xp.select(0, i);
        const double c_sq = xp_sq.select(0, i).item<double>();
        return (xp_sq - 2.0 * at::mv(xp, c).to(at::kDouble) + c_sq).clamp_min_(0.0);
      };
      int64_t chosen = std::min<int64_t>(static_cast<int64_t>(uniform01(seed, p, 0) * n), n - 1);
      cp.select(0, 0).copy_(xp.select(0, chosen));
      at::Tensor dist2 = sq_dist(chosen);
      std::vector<double> cum(n);
      for (int64_t j = 1; j < k; ++j) {
        const double* w = dist2.const_data_ptr<double>();
        double total = 0.0;
        for (int64_t i = 0; i < n; ++i) cum[i] = total += (init == 0 ? w[i] : std::sqrt(w[i]));
        const double u = uniform01(seed, p, j);
        if (total > 0.0)  // first point whose cumulative weight exceeds u * total
          chosen = std::min<int64_t>(std::upper_bound(cum.begin(), cum.end(), u * total) - cum.begin(), n - 1);
        else  // every point coincides with a chosen centroid
          chosen = std::min<int64_t>(static_cast<int64_t>(u * n), n - 1);
        cp.select(0, j).copy_(xp.select(0, chosen));
        at::minimum_out(dist2, dist2, sq_dist(chosen));
      }
    }
  });

  // ---- Lloyd iterations with per-problem stopping.
  const at::Tensor flat_x = x.view({P * M, d});
  const at::Tensor offsets = (at::arange(P, long_opts) * k).unsqueeze(1);  // (P, 1)
  const at::Tensor invalid = valid.logical_not();
  at::Tensor active = at::ones({P}, x.options().dtype(at::kBool));
  at::Tensor iterations = at::zeros({P}, long_opts);
  for (int64_t it = 0; it < max_iters; ++it) {
    // Padding points go to a dump row P * k that is dropped.
    const at::Tensor slot = (assign(x, centroids) + offsets).masked_fill_(invalid, P * k).view({P * M});
    const at::Tensor sums = at::zeros({P * k + 1, d}, x.options()).index_add_(0, slot, flat_x);
    const at::Tensor members = at::zeros({P * k + 1}, x.options()).index_add_(0, slot, at::ones({P * M}, x.options()));
    const at::Tensor n = members.narrow(0, 0, P * k).view({P, k, 1});
    // An empty cluster keeps its centroid.
    const at::Tensor updated = at::where(n > 0, sums.narrow(0, 0, P * k).view({P, k, d}) / n.clamp_min(1), centroids);
    const at::Tensor shift = (updated.to(at::kDouble) - centroids.to(at::kDouble)).square().sum({1, 2}).sqrt();
    centroids = at::where(active.view({P, 1, 1}), updated, centroids);
    iterations += active.to(at::kLong);
    active = active.logical_and(shift > tol);
    if (!active.any().item<bool>()) break;
  }
  at::Tensor labels = assign(x, centroids).masked_fill_(valid.logical_not(), -1);  // refer to the returned centroids
  return {centroids, labels, iterations};
}

TORCH_LIBRARY_IMPL(dse, CPU, m) { m.impl("kmeans", &kmeans); }

}  // namespace dse::cpu
