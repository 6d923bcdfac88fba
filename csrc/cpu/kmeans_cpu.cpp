// Batched k-means on the CPU.
//
// Each problem is solved whole by one thread (seeding, every Lloyd iteration,
// the final assignment), so its points stay in that core's cache throughout and
// it stops on its own convergence test; threads take the next unsolved problem
// as they finish. With fewer problems than threads, problems go one at a time
// and each one's loops and GEMMs use every thread instead. Distances come from a small GEMM (|c|^2 - 2 x.c, in float64
// from the GEMM's dot products), centroid means are accumulated in float64.
// A problem's result depends only on its own points, never on the batch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "common/checks.h"
#include "common/rng.h"
#include "cpu/kernels.h"
#include "cpu/lapack.h"

namespace dse::cpu {
namespace {

// Per-thread buffers, sized for the largest problem.
template <typename scalar_t>
struct Workspace {
  Workspace(int64_t M, int64_t k, int64_t d)
      : dots(M * k), xsq(M), dist2(M), cum(M), csq(k), sums(k * d), centroids(k * d), members(k) {}
  std::vector<scalar_t> dots;  // (k, M) c . x
  std::vector<double> xsq, dist2, cum, csq, sums, centroids;  // centroids: (k, d) float64 copy
  std::vector<int64_t> members;
  bool inner_parallel = false;  // split each problem's loops over threads (when problems are fewer than threads)
};

// f(begin, end) over [0, n): on all threads when `parallel`, else on this one. Every
// element is computed the same way either way, so the results do not change.
template <typename F>
void loop(bool parallel, int64_t n, int64_t grain, const F& f) {
  if (parallel)
    at::parallel_for(0, n, grain, f);
  else
    f(0, n);
}

// k-means++ seeding of one problem: writes k rows of x to c (k, d).
// Draw j uses uniform01(seed, stream, j); weights are D^2 (init 0) or D (init 1).
template <typename scalar_t>
void seed_plus_plus(const scalar_t* x, int64_t n, int64_t d, int64_t k, int64_t init, uint64_t seed, uint64_t stream,
                    scalar_t* c, Workspace<scalar_t>& ws) {
  loop(ws.inner_parallel, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      double s = 0.0;
      for (int64_t t = 0; t < d; ++t) s += static_cast<double>(x[i * d + t]) * static_cast<double>(x[i * d + t]);
      ws.xsq[i] = s;
    }
  });
  // |x_i - x_chosen|^2 for every i, clamped at 0 against rounding.
  auto distances_to = [&](int64_t chosen, double* out, bool keep_min) {
    gemm_abt(n, 1, d, x, d, x + chosen * d, d, ws.dots.data(), 1);
    loop(ws.inner_parallel, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const double v = std::max(0.0, ws.xsq[i] - 2.0 * static_cast<double>(ws.dots[i]) + ws.xsq[chosen]);
        out[i] = keep_min ? std::min(out[i], v) : v;
      }
    });
  };
  int64_t chosen = std::min<int64_t>(static_cast<int64_t>(uniform01(seed, stream, 0) * n), n - 1);
  std::copy(x + chosen * d, x + (chosen + 1) * d, c);
  distances_to(chosen, ws.dist2.data(), false);
  for (int64_t j = 1; j < k; ++j) {
    double total = 0.0;
    int64_t last_positive = -1;
    for (int64_t i = 0; i < n; ++i) {
      const double w = init == 0 ? ws.dist2[i] : std::sqrt(ws.dist2[i]);
      if (w > 0.0) last_positive = i;
      ws.cum[i] = total += w;
    }
    const double u = uniform01(seed, stream, j);
    if (total > 0.0) {  // first point whose cumulative weight exceeds u * total
      chosen = std::upper_bound(ws.cum.begin(), ws.cum.begin() + n, u * total) - ws.cum.begin();
      if (chosen >= n) chosen = last_positive;
    } else {  // every point coincides with a chosen centroid
      chosen = std::min<int64_t>(static_cast<int64_t>(u * n), n - 1);
    }
    std::copy(x + chosen * d, x + (chosen + 1) * d, c + j * d);
    distances_to(chosen, ws.dist2.data(), true);
  }
}

// Nearest centroid of each of the n points (ties to the lowest index).
template <typename scalar_t>
void assign(const scalar_t* x, int64_t n, int64_t d, const scalar_t* c, int64_t k, int64_t* labels,
            Workspace<scalar_t>& ws) {
  gemm_abt(k, n, d, c, d, x, d, ws.dots.data(), n);  // (k, n): this orientation runs faster for small k
  for (int64_t j = 0; j < k; ++j) {
    double s = 0.0;
    for (int64_t t = 0; t < d; ++t) s += static_cast<double>(c[j * d + t]) * static_cast<double>(c[j * d + t]);
    ws.csq[j] = s;
  }
  double* best_val = ws.dist2.data();  // |x - c|^2 - |x|^2 of the best centroid so far
  loop(ws.inner_parallel, n, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      best_val[i] = ws.csq[0] - 2.0 * static_cast<double>(ws.dots[i]);
      labels[i] = 0;
    }
    for (int64_t j = 1; j < k; ++j) {
      const scalar_t* row = ws.dots.data() + j * n;
      for (int64_t i = begin; i < end; ++i) {
        const double v = ws.csq[j] - 2.0 * static_cast<double>(row[i]);
        if (v < best_val[i]) {
          best_val[i] = v;
          labels[i] = j;
        }
      }
    }
  });
}

// Lloyd iterations from the seeded centroids c; returns the number of updates made.
// Stops after the first update whose centroid shift (Frobenius norm) is <= tol.
template <typename scalar_t>
int64_t lloyd(const scalar_t* x, int64_t n, int64_t d, int64_t k, int64_t max_iters, double tol, scalar_t* c,
              int64_t* labels, Workspace<scalar_t>& ws) {
  for (int64_t i = 0; i < k * d; ++i) ws.centroids[i] = static_cast<double>(c[i]);
  int64_t it = 0;
  while (it < max_iters) {
    assign(x, n, d, c, k, labels, ws);
    std::fill(ws.sums.begin(), ws.sums.end(), 0.0);
    std::fill(ws.members.begin(), ws.members.end(), 0);
    for (int64_t i = 0; i < n; ++i) ws.members[labels[i]] += 1;
    loop(ws.inner_parallel, d, 16, [&](int64_t t0, int64_t t1) {  // column blocks: no two threads share a sum
      for (int64_t i = 0; i < n; ++i) {
        double* s = ws.sums.data() + labels[i] * d;
        const scalar_t* row = x + i * d;
        for (int64_t t = t0; t < t1; ++t) s[t] += static_cast<double>(row[t]);
      }
    });
    double shift2 = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      if (ws.members[j] == 0) continue;  // an empty cluster keeps its centroid
      const double inv = 1.0 / static_cast<double>(ws.members[j]);
      for (int64_t t = 0; t < d; ++t) {
        const double updated = ws.sums[j * d + t] * inv;
        const double diff = updated - ws.centroids[j * d + t];
        shift2 += diff * diff;
        ws.centroids[j * d + t] = updated;
        c[j * d + t] = static_cast<scalar_t>(updated);
      }
    }
    ++it;
    if (std::sqrt(shift2) <= tol) break;
  }
  return it;
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

  at::Tensor centroids = at::empty({P, k, d}, x.options());
  at::Tensor labels = at::full({P, M}, -1, x.options().dtype(at::kLong));  // padding points keep -1
  at::Tensor iterations = at::zeros({P}, x.options().dtype(at::kLong));
  int64_t* lp = labels.data_ptr<int64_t>();
  int64_t* ip = iterations.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_kmeans_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* cp = centroids.data_ptr<scalar_t>();
    std::atomic<int64_t> next{0};
    const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), P));
    auto solve = [&](bool inner_parallel) {
      Workspace<scalar_t> ws(M, k, d);
      ws.inner_parallel = inner_parallel;
      for (int64_t p = next++; p < P; p = next++) {
        const scalar_t* xq = xp + p * M * d;
        scalar_t* cq = cp + p * k * d;
        int64_t* lq = lp + p * M;
        seed_plus_plus(xq, cnt[p], d, k, init, static_cast<uint64_t>(seed), static_cast<uint64_t>(p), cq, ws);
        ip[p] = lloyd(xq, cnt[p], d, k, max_iters, tol, cq, lq, ws);
        assign(xq, cnt[p], d, cq, k, lq, ws);  // labels refer to the returned centroids
      }
    };
    if (P < at::get_num_threads())  // few problems: one at a time, each on every thread (BLAS included)
      solve(true);
    else
      at::parallel_for(0, threads, 1, [&](int64_t, int64_t) { solve(false); });
  });
  return {centroids, labels, iterations};
}

TORCH_LIBRARY_IMPL(dse, CPU, m) { m.impl("kmeans", &kmeans); }

}  // namespace dse::cpu
