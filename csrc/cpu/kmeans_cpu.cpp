// dse::kmeans on the CPU: batched k-means (not differentiable: no backward).
//
// Each problem is solved whole by one thread (seeding, every Lloyd iteration,
// the final assignment), so its points stay in that core's cache throughout and
// it stops on its own convergence test; threads take the next unsolved problem
// as they finish. With fewer problems than threads, problems go one at a time
// and each one's loops use every thread instead. Distances come from small GEMMs
// (|c|^2 - 2 x.c, in float64 from the GEMM's dot products), one per block of
// kPointBlock points, each followed at once by that block's scan (nearest
// centroid, or seeding distances) while its dots are in cache, and in a Lloyd update by
// the sums of its members while its points are (one pass over the points per update
// instead of two: a problem of the whole batch does not fit in cache). The blocks are the
// same however many threads run them, and every BLAS call is single-threaded
// (inside our parallel loops), so the bits do not depend on the thread count.
// One GEMM over a whole large problem made BLAS repack all its points at every
// call and left the threads waiting on each other between the GEMM and the scan.
// Centroid means are accumulated in float64. A problem's result depends only on
// its own points, never on the batch. Ties and rounding follow
// common/kmeans_rules.h, as on CUDA.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "common/kmeans_args.h"
#include "common/kmeans_rules.h"
#include "common/rng.h"
#include "cpu/kernels.h"
#include "cpu/lapack.h"

namespace dse::cpu {
namespace {

// Per-thread buffers, sized for the largest problem.
template <typename scalar_t>
struct Workspace {
  Workspace(int64_t M, int64_t k, int64_t d)
      : dots(M * k), xsq(M), dist2(M), block_totals(seed_block_count(M)), csq(k), sums(k * d),
        segment_sums(segment_count(M, kUpdateSegment) * k * d), centroids(k * d), members(k),
        segment_members(segment_count(M, kUpdateSegment) * k), duplicate(k) {}
  std::vector<scalar_t> dots;  // (k, M) c . x
  std::vector<double> xsq, dist2, block_totals, csq, sums, centroids;  // centroids: (k, d) float64 copy
  std::vector<double> segment_sums;       // (segments, k, d): each update segment's sums of its members
  std::vector<int64_t> members, segment_members;  // (k,) and (segments, k) member counts
  std::vector<char> duplicate;  // duplicate[j]: centroid j equals a lower-numbered one
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

// Points per distance GEMM: small enough for a block's dots and points to stay in
// cache until its scan, large enough for BLAS to run near its peak.
constexpr int64_t kPointBlock = 1024;

// f(begin, end) for each block [b * kPointBlock, ...) of [0, n), in parallel over
// blocks when `parallel`. The blocks do not depend on the thread count.
template <typename F>
void for_each_point_block(bool parallel, int64_t n, const F& f) {
  const int64_t blocks = (n + kPointBlock - 1) / kPointBlock;
  loop(parallel, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) f(b * kPointBlock, std::min(n, (b + 1) * kPointBlock));
  });
}

// Bound on the rounding error of |x|^2 - 2 x.c + |c|^2 when x.c comes from a GEMM in
// scalar_t over d terms (|error of a dot| <= d u |x||c|, u = eps / 2, plus the float64
// norms), with a margin of 2: a GEMM distance at or below it may be an exact 0.
template <typename scalar_t>
double gemm_distance_error_bound(int64_t d, double xsq, double csq) {
  return 2.0 * static_cast<double>(d + 4) * static_cast<double>(std::numeric_limits<scalar_t>::epsilon()) *
         (xsq + csq);
}

// k-means++ seeding of one problem: writes k rows of x to c (k, d), by the rules of
// common/kmeans_rules.h. Draw j uses uniform01(seed, stream, j); weights are D^2
// (init 0) or D (init 1).
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
  // |x_i - x_chosen|^2 for every i, clamped at 0 against rounding. Values within the
  // GEMM's rounding of 0 are measured again directly, so that a point equal to the
  // chosen one gets exactly 0 (a zero weight: never drawn again while others weigh more).
  auto distances_to = [&](int64_t chosen, double* out, bool keep_min) {
    for_each_point_block(ws.inner_parallel, n, [&](int64_t begin, int64_t end) {
      gemm_abt(end - begin, 1, d, x + begin * d, d, x + chosen * d, d, ws.dots.data() + begin, 1);
      for (int64_t i = begin; i < end; ++i) {
        double v = std::max(0.0, ws.xsq[i] - 2.0 * static_cast<double>(ws.dots[i]) + ws.xsq[chosen]);
        if (v <= gemm_distance_error_bound<scalar_t>(d, ws.xsq[i], ws.xsq[chosen]))
          v = squared_distance_f64(x + i * d, x + chosen * d, d);
        out[i] = keep_min ? std::min(out[i], v) : v;
      }
    });
  };
  const int64_t blocks = seed_block_count(n);
  int64_t chosen = seed_uniform_pick(uniform01(seed, stream, 0), n);
  std::copy(x + chosen * d, x + (chosen + 1) * d, c);
  if (k > 1) distances_to(chosen, ws.dist2.data(), false);
  for (int64_t j = 1; j < k; ++j) {
    loop(ws.inner_parallel, blocks, 16, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) ws.block_totals[b] = seed_block_total(ws.dist2.data(), n, init, b);
    });
    chosen = seed_pick(ws.dist2.data(), n, init, ws.block_totals.data(), uniform01(seed, stream, j));
    std::copy(x + chosen * d, x + (chosen + 1) * d, c + j * d);
    if (j + 1 < k) distances_to(chosen, ws.dist2.data(), true);
  }
}

// Nearest centroid of each of the n points (ties to the lowest index, common/kmeans_rules.h).
// after_block(begin, end) runs on each block of points once its labels are set, while the
// block's points are still in cache.
template <typename scalar_t, typename AfterBlock>
void assign(const scalar_t* x, int64_t n, int64_t d, const scalar_t* c, int64_t k, int64_t* labels,
            Workspace<scalar_t>& ws, const AfterBlock& after_block) {
  for (int64_t j = 0; j < k; ++j) {
    double s = 0.0;
    for (int64_t t = 0; t < d; ++t) s += static_cast<double>(c[j * d + t]) * static_cast<double>(c[j * d + t]);
    ws.csq[j] = s;
    // A centroid equal to a lower-numbered one ties with it at every point and so never
    // wins; skipping it keeps the GEMM's rounding of the two rows from breaking that tie.
    ws.duplicate[j] = 0;
    for (int64_t q = 0; q < j && !ws.duplicate[j]; ++q)
      ws.duplicate[j] = std::equal(c + j * d, c + (j + 1) * d, c + q * d);
  }
  double* best_val = ws.dist2.data();  // |x - c|^2 - |x|^2 of the best centroid so far
  for_each_point_block(ws.inner_parallel, n, [&](int64_t begin, int64_t end) {
    // dots (k, n), this block's columns: this orientation runs faster for small k
    gemm_abt(k, end - begin, d, c, d, x + begin * d, d, ws.dots.data() + begin, n);
    for (int64_t i = begin; i < end; ++i) {
      best_val[i] = ws.csq[0] - 2.0 * static_cast<double>(ws.dots[i]);
      labels[i] = 0;
    }
    for (int64_t j = 1; j < k; ++j) {
      if (ws.duplicate[j]) continue;
      const scalar_t* row = ws.dots.data() + j * n;
      for (int64_t i = begin; i < end; ++i) {
        const double v = ws.csq[j] - 2.0 * static_cast<double>(row[i]);
        if (nearer(v, best_val[i])) {
          best_val[i] = v;
          labels[i] = j;
        }
      }
    }
    after_block(begin, end);
  });
}

template <typename scalar_t>
void assign(const scalar_t* x, int64_t n, int64_t d, const scalar_t* c, int64_t k, int64_t* labels,
            Workspace<scalar_t>& ws) {
  assign(x, n, d, c, k, labels, ws, [](int64_t, int64_t) {});
}

// acc[t] += row[t] for t in [0, n): the centroid sums' inner loop, compiled for AVX-512,
// AVX2 and the baseline, chosen at load time (the same additions in the same order
// in every variant, so the same bits).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DSE_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DSE_SIMD_CLONES
#endif
DSE_SIMD_CLONES void add_row(double* __restrict acc, const float* __restrict row, int64_t n) {
  for (int64_t t = 0; t < n; ++t) acc[t] += static_cast<double>(row[t]);
}
DSE_SIMD_CLONES void add_row(double* __restrict acc, const double* __restrict row, int64_t n) {
  for (int64_t t = 0; t < n; ++t) acc[t] += row[t];
}

// A point block holds whole update segments, so the blocks' segments are disjoint.
static_assert(kPointBlock % kUpdateSegment == 0, "point blocks must hold whole update segments");

// The sums and member counts of the update segments in the point block [begin, end) by
// the labels just assigned: each segment's sums start from 0.0 and add its members in
// point order (common/kmeans_rules.h).
template <typename scalar_t>
void sum_segments(const scalar_t* x, int64_t begin, int64_t end, int64_t d, int64_t k, const int64_t* labels,
                  Workspace<scalar_t>& ws) {
  for (int64_t s = begin / kUpdateSegment; s * kUpdateSegment < end; ++s) {
    const Segment seg = segment_bounds(s, end, kUpdateSegment);
    double* sums = ws.segment_sums.data() + s * k * d;
    int64_t* members = ws.segment_members.data() + s * k;
    std::fill(sums, sums + k * d, 0.0);
    std::fill(members, members + k, 0);
    for (int64_t i = seg.begin; i < seg.end; ++i) {
      add_row(sums + labels[i] * d, x + i * d, d);
      members[labels[i]] += 1;
    }
  }
}

// Float64 sums (k, d) and member counts (k) of the clusters from the segments' (sum_segments),
// the segments added in segment order: the same bits as the CUDA kernel's sums.
template <typename scalar_t>
void cluster_sums(int64_t n, int64_t d, int64_t k, Workspace<scalar_t>& ws) {
  const int64_t segments = segment_count(n, kUpdateSegment);
  std::fill(ws.members.begin(), ws.members.end(), 0);
  for (int64_t s = 0; s < segments; ++s)
    for (int64_t j = 0; j < k; ++j) ws.members[j] += ws.segment_members[s * k + j];
  loop(ws.inner_parallel, k * d, 1024, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      double sum = ws.segment_sums[e];
      for (int64_t s = 1; s < segments; ++s) sum += ws.segment_sums[s * k * d + e];
      ws.sums[e] = sum;
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
    // Each block's members are summed right after its assignment, while its points are in cache.
    assign(x, n, d, c, k, labels, ws,
           [&](int64_t begin, int64_t end) { sum_segments(x, begin, end, d, k, labels, ws); });
    cluster_sums(n, d, k, ws);
    double shift2 = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      if (ws.members[j] == 0) continue;  // an empty cluster keeps its centroid
      const double inv = inverse_count(ws.members[j]);
      for (int64_t t = 0; t < d; ++t) {
        const double updated = centroid_from_sum(ws.sums[j * d + t], inv);
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
  const KmeansArgs in = check_kmeans_args(x_in, counts_in, k, max_iters, tol, init, c10::DeviceType::CPU);
  const at::Tensor& x = in.x;
  const int64_t P = in.P, M = in.M, d = in.d;
  const int64_t* cnt = in.counts.const_data_ptr<int64_t>();

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
