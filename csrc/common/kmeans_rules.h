// The rules of dse::kmeans that decide ties and rounding, written once. The CPU
// kernel (cpu/kmeans_cpu.cpp) and the CUDA kernel (cuda/kmeans_cuda.cu) call the
// host/device helpers below, so the C++ tests run the very code the GPU runs; the
// pure-PyTorch twin (dse_ext/reference.py, _seed_pick and _kmeans_single) follows
// the same rules with torch operations.
//
// Seeding (k-means++). Draw j of problem p is u_j = uniform01(seed, p, j) (common/rng.h).
//   * First centroid: point min(floor(u_0 * n), n - 1).
//   * Weights: w_i = D_i^2 (init 0) or D_i (init 1), D_i^2 the float64 squared distance
//     from point i to the nearest chosen centroid. A point equal to a chosen centroid has
//     D_i^2 = 0 exactly (the CPU kernel, which measures distances through a GEMM,
//     re-measures near-zero ones directly so that rounding cannot leave such a point a
//     tiny weight).
//   * Cumulative sums in blocks of kSeedBlock points: block b covers points
//     [b * kSeedBlock, (b + 1) * kSeedBlock); within a block the weights are added in
//     point order from 0.0 (run_i), the block totals are added in block order from 0.0
//     (before_b = sum of the totals of the blocks before b), and the cumulative weight of
//     point i in block b is cum_i = before_b + run_i. total = the sum of all block
//     totals. (cum is non-decreasing, and cum_i = cum_{i-1} when w_i = 0.)
//   * Next centroid (total > 0): the first point with cum_i > u_j * total. Such a point
//     has w_i > 0, so a zero-weight point (a duplicate of a chosen centroid) is never
//     picked while any point has a positive weight. When rounding leaves no such point
//     (u_j * total rounded up to total), the last point with w_i > 0.
//   * Next centroid when total == 0 (every point coincides with a chosen centroid, i.e.
//     fewer distinct points than k): point min(floor(u_j * n), n - 1), a duplicate.
//
// Lloyd iterations.
//   * Nearest centroid: the smallest squared distance, ties to the lowest index (centroids
//     are scanned upwards and replace the best only when strictly nearer). A centroid equal
//     to a lower-numbered one therefore never receives a point; the CPU kernel skips such
//     centroids explicitly, so that GEMM rounding cannot break that tie. Distinct
//     centroids at exactly the same distance tie the same way wherever the distances are
//     exact (small integer or dyadic coordinates); otherwise the CPU kernel's GEMM
//     distances and the direct float64 distances of the CUDA kernel and the reference may
//     round a near-tie differently.
//   * Update: the float64 sum of a cluster's members times the reciprocal 1 / n_j computed
//     once (sum * (1.0 / n_j), never sum / n_j). The sum runs over the points in segments
//     of kUpdateSegment points (common/segments.h: sequential in point order within a
//     segment, segment sums added in segment order), on the CPU and on CUDA alike, so both
//     give the same bits for the same labels; the reference adds the members with torch
//     (equal up to rounding, and bit-equal whenever the sums are exact).
//   * An empty cluster keeps its centroid. A problem stops after the first update whose
//     centroid shift (Frobenius norm) is <= tol, or after max_iters updates; the labels
//     returned are re-assigned to the returned centroids.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/macros.h"
#include "common/segments.h"

namespace dse {

// ---------------------------------------------------------------- seeding

constexpr int64_t kSeedBlock = 256;  // points per block of the cumulative weights

// min(floor(u * n), n - 1): the first centroid, and every centroid once all weights are 0.
DSE_HOST_DEVICE int64_t seed_uniform_pick(double u, int64_t n) {
  const int64_t i = static_cast<int64_t>(u * static_cast<double>(n));
  return i < n - 1 ? i : n - 1;
}

// The sampling weight of a point at squared distance dist2: D^2 (init 0) or D (init 1).
DSE_HOST_DEVICE double seed_weight(double dist2, int64_t init) { return init == 0 ? dist2 : sqrt(dist2); }

DSE_HOST_DEVICE int64_t seed_block_count(int64_t n) { return segment_count(n, kSeedBlock); }

// Total weight of block b: its weights added in point order from 0.0.
DSE_HOST_DEVICE double seed_block_total(const double* dist2, int64_t n, int64_t init, int64_t b) {
  const Segment s = segment_bounds(b, n, kSeedBlock);
  double run = 0.0;
  for (int64_t i = s.begin; i < s.end; ++i) run += seed_weight(dist2[i], init);
  return run;
}

// The point draw u picks (rule above), given the squared distances dist2[0..n) to the
// nearest chosen centroid and the totals of the seed_block_count(n) blocks (computed by
// seed_block_total, possibly in parallel).
DSE_HOST_DEVICE int64_t seed_pick(const double* dist2, int64_t n, int64_t init, const double* block_totals,
                                  double u) {
  const int64_t blocks = seed_block_count(n);
  double total = 0.0;
  for (int64_t b = 0; b < blocks; ++b) total += block_totals[b];
  if (!(total > 0.0)) return seed_uniform_pick(u, n);
  const double target = u * total;
  double before = 0.0;
  for (int64_t b = 0; b < blocks; ++b) {
    const double after = before + block_totals[b];
    if (after > target) {  // the first point with cum_i > target is in this block
      const Segment s = segment_bounds(b, n, kSeedBlock);
      double run = 0.0;
      int64_t last_positive = -1;
      for (int64_t i = s.begin; i < s.end; ++i) {
        const double w = seed_weight(dist2[i], init);
        run += w;
        if (w > 0.0) last_positive = i;
        if (before + run > target) return i;
      }
      // Not reached: the block's last cum is before + (its sequential total) = after.
      return last_positive;
    }
    before = after;
  }
  for (int64_t i = n - 1; i >= 0; --i)  // u * total rounded up to total
    if (seed_weight(dist2[i], init) > 0.0) return i;
  return n - 1;  // not reached: total > 0
}

// Squared distance of a point a (d entries) to b, in float64, added in coordinate
// order. On CUDA without fused multiply-adds (__dmul_rn / __dadd_rn), so that the CPU
// (which builds without FMA contraction) and the GPU give the same bits.
template <typename A, typename B>
DSE_HOST_DEVICE double squared_distance_f64(const A* a, const B* b, int64_t d) {
  double acc = 0.0;
  for (int64_t t = 0; t < d; ++t) {
    const double diff = static_cast<double>(a[t]) - static_cast<double>(b[t]);
#ifdef __CUDA_ARCH__
    acc = __dadd_rn(acc, __dmul_rn(diff, diff));
#else
    acc += diff * diff;
#endif
  }
  return acc;
}

// ---------------------------------------------------------------- Lloyd iterations

// Whether centroid j at squared distance `candidate` replaces the best one so far (at
// `best`), scanning j upwards: strictly nearer only, so ties go to the lowest index.
DSE_HOST_DEVICE bool nearer(double candidate, double best) { return candidate < best; }

constexpr int64_t kUpdateSegment = 512;  // points per segment of the centroid sums

// The centroid update of a cluster of n >= 1 members: sum * inverse_count(n).
DSE_HOST_DEVICE double inverse_count(int64_t n) { return 1.0 / static_cast<double>(n); }
DSE_HOST_DEVICE double centroid_from_sum(double sum, double inverse) { return sum * inverse; }

}  // namespace dse
