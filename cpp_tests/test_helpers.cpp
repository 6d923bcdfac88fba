// Host/device helpers (csrc/common/*.h), tested on the CPU: the CUDA kernels
// include the same headers.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <vector>

#include "common/css_batches.h"
#include "common/eigen_solver_choice.h"
#include "common/kmeans_rules.h"
#include "common/rng.h"
#include "common/segments.h"
#include "common/spectrum.h"
#include "cpu/cluster_rows.h"
#include "cpu/output_cache.h"
#include "cpu/gram_spectra.h"

TEST(Rng, SplitMix64ReferenceValue) {
  // First output of SplitMix64 seeded with 0 (Vigna's reference implementation).
  EXPECT_EQ(dse::splitmix64(0), 0xE220A8397B1DCDAFULL);
}

TEST(Rng, UniformIsDeterministicAndInRange) {
  double sum = 0.0;
  for (uint64_t c = 0; c < 1000; ++c) {
    const double u = dse::uniform01(42, 3, c);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    ASSERT_EQ(u, dse::uniform01(42, 3, c));
    sum += u;
  }
  EXPECT_NEAR(sum / 1000.0, 0.5, 0.03);
  EXPECT_NE(dse::uniform01(42, 3, 0), dse::uniform01(42, 4, 0));
  EXPECT_NE(dse::uniform01(42, 3, 0), dse::uniform01(43, 3, 0));
}

TEST(Spectrum, NuclearNormAndNoiseFloor) {
  const double eig[4] = {9.0, 4.0, 1.0, -1e-18};  // a tiny negative eigenvalue is rounding noise
  EXPECT_DOUBLE_EQ(dse::nuclear_norm_from_eigs(eig, 4), 6.0);
  const double zeros[3] = {0.0, 0.0, 0.0};
  EXPECT_EQ(dse::nuclear_norm_from_eigs(zeros, 3), 0.0);
}

TEST(Spectrum, AbsoluteFloorSilencesPureNoise) {
  // The centred matrix of identical points is rounding noise only: the relative floor
  // (m eps lambda_max) cannot tell, the centring floor can (used by the CPU and CUDA css).
  const double noise[2] = {1e-33, 4e-33};
  EXPECT_GT(dse::nuclear_norm_from_eigs(noise, 2), 0.0);
  const double floor = dse::centring_noise_floor(3, 1.0);
  EXPECT_GT(floor, 4e-33);
  EXPECT_LT(floor, 1e-28);  // far below any genuine spread of unit-norm tokens
  EXPECT_EQ(dse::nuclear_norm_from_eigs(noise, 2, floor), 0.0);
  EXPECT_EQ(dse::gram_noise_floor(noise, 2, floor), floor);
  const double real[2] = {1e-6, 4.0};  // a genuine small singular value survives
  EXPECT_DOUBLE_EQ(dse::nuclear_norm_from_eigs(real, 2, floor), 1e-3 + 2.0);
}

TEST(Spectrum, EffectiveRank) {
  const double equal[4] = {4.0, 4.0, 4.0, 4.0};
  EXPECT_NEAR(dse::effective_rank_from_eigs(equal, 4, 4), 1.0, 1e-15);
  const double two[4] = {0.0, 0.0, 4.0, 4.0};
  EXPECT_NEAR(dse::effective_rank_from_eigs(two, 4, 4), 0.5, 1e-15);
  const double one[3] = {0.0, 1e-40, 25.0};
  EXPECT_NEAR(dse::effective_rank_from_eigs(one, 3, 3), 1.0 / 3.0, 1e-15);
  const double none[2] = {0.0, 0.0};
  EXPECT_EQ(dse::effective_rank_from_eigs(none, 2, 2), 0.0);
}

TEST(Spectrum, CssDenominator) {
  EXPECT_DOUBLE_EQ(dse::css_denominator(10, 4), 3.0);   // sqrt(n - 1)
  EXPECT_DOUBLE_EQ(dse::css_denominator(5, 16), 4.0);   // sqrt(d)
}

TEST(Spectrum, HouseholderCentringKeepsTheSingularValues) {
  at::manual_seed(0);
  for (int64_t n : {2, 3, 17, 40}) {
    const int64_t d = 9;
    const at::Tensor x = at::randn({n, d}, at::kDouble) + 3.0;
    const at::Tensor centred = x - x.mean(0, true);
    const at::Tensor expected = at::linalg_svdvals(centred).sum();
    const at::Tensor colsum = x.sum(0);
    const dse::HouseholderCentering h = dse::householder_centering(n);
    at::Tensor z = at::empty({n - 1, d}, at::kDouble);
    for (int64_t i = 0; i < n - 1; ++i)
      for (int64_t t = 0; t < d; ++t)
        z[i][t] = dse::householder_centered(x[i][t].item<double>(), colsum[t].item<double>(),
                                            x[n - 1][t].item<double>(), h);
    const at::Tensor eig = dse::cpu::gram_eigenvalues(z);
    EXPECT_NEAR(dse::nuclear_norm_from_eigs(eig.data_ptr<double>(), eig.size(0)), expected.item<double>(),
                1e-11 * expected.item<double>())
        << "n = " << n;
    // Z Z^T has exactly the non-zero spectrum of the centred Gram matrix: traces agree.
    EXPECT_NEAR(z.square().sum().item<double>(), centred.square().sum().item<double>(), 1e-10);
  }
}

TEST(ClusterRows, ScatterIsTheAdjointOfTheCentring) {
  // fill_centred is linear in the points (Z = R X); scatter_centred_gradient applies R^T.
  at::manual_seed(21);
  const int64_t n = 7, d = 5, M = 9;
  const at::Tensor x = at::randn({M, d}, at::kDouble);
  const std::vector<int64_t> members = {4, 0, 8, 2, 6, 1, 5};
  std::vector<double> z((n - 1) * d);
  dse::cpu::fill_centred<double>(x.const_data_ptr<double>(), members.data(), n, d, z.data(), 1);
  const at::Tensor y = at::randn({n - 1, d}, at::kDouble);
  at::Tensor back = at::zeros({M, d}, at::kDouble);
  dse::cpu::scatter_centred_gradient<double>(y.const_data_ptr<double>(), members.data(), n, d, 1.0,
                                             back.data_ptr<double>());
  double lhs = 0.0;
  for (int64_t i = 0; i < (n - 1) * d; ++i) lhs += z[i] * y.const_data_ptr<double>()[i];
  EXPECT_NEAR(lhs, (back * x).sum().item<double>(), 1e-12);
  // the points outside the cluster get nothing, and the gradient of a translation-free map sums to 0
  EXPECT_EQ(back[3].abs().sum().item<double>(), 0.0);
  EXPECT_NEAR(back.sum(0).abs().max().item<double>(), 0.0, 1e-12);
}

TEST(EigenSolverChoice, JacobiForSmallMatricesThenBatchedThenTorch) {
  using dse::EigenSolver;
  using dse::choose_eigen_solver;
  for (bool have : {true, false}) {
    const EigenSolver general = have ? EigenSolver::kBatched : EigenSolver::kTorch;
    EXPECT_EQ(choose_eigen_solver(1, EigenSolver::kAuto, have), EigenSolver::kJacobi);
    EXPECT_EQ(choose_eigen_solver(32, EigenSolver::kAuto, have), EigenSolver::kJacobi);
    EXPECT_EQ(choose_eigen_solver(33, EigenSolver::kAuto, have), general);
    EXPECT_EQ(choose_eigen_solver(384, EigenSolver::kAuto, have), general);
    // Pinned solvers: Jacobi only where it can run, batched only where it exists.
    EXPECT_EQ(choose_eigen_solver(8, EigenSolver::kJacobi, have), EigenSolver::kJacobi);
    EXPECT_EQ(choose_eigen_solver(64, EigenSolver::kJacobi, have), general);
    EXPECT_EQ(choose_eigen_solver(8, EigenSolver::kBatched, have), general);
    EXPECT_EQ(choose_eigen_solver(8, EigenSolver::kTorch, have), EigenSolver::kTorch);
  }
}

TEST(EigenSolverChoice, NamesRoundTrip) {
  for (auto s : {dse::EigenSolver::kAuto, dse::EigenSolver::kJacobi, dse::EigenSolver::kBatched,
                 dse::EigenSolver::kTorch}) {
    EXPECT_EQ(dse::eigen_solver_from_name(dse::eigen_solver_name(s)), s);
  }
  EXPECT_THROW(dse::eigen_solver_from_name("qr"), std::invalid_argument);
}

// ---------------------------------------------------------------- eigensolver batches and fallback

TEST(EigenSolverChunks, WithinTheLimitsOfOneCall) {
  EXPECT_EQ(dse::eigen_batch_limit(8, 8), 65535);
  EXPECT_EQ(dse::eigen_batch_limit(32, 32), 65535);
  EXPECT_EQ(dse::eigen_batch_limit(384, 384), INT32_MAX / (384 * 384));  // 14563
  EXPECT_EQ(dse::eigen_batch_limit(46340, 46340), 1);
  EXPECT_EQ(dse::eigen_batch_limit(46341, 46341), 0);  // one matrix is already over: torch takes the batch
  EXPECT_EQ(dse::eigen_batch_limit(1000, 1024), INT32_MAX / (1000 * 1024));  // 2097: lda counts
  for (int64_t n : {1, 7, 32, 33, 195, 384, 1000}) {
    for (int64_t B : {0, 1, 65535, 65536, 200001}) {
      const std::vector<dse::EigenChunk> chunks = dse::eigen_batch_chunks(B, n, n);
      int64_t next = 0;
      for (const dse::EigenChunk& c : chunks) {
        EXPECT_EQ(c.start, next);
        EXPECT_GE(c.count, 1);
        EXPECT_LE(c.count, 65535);
        EXPECT_LE(c.count * n * n, static_cast<int64_t>(INT32_MAX)) << "n = " << n;
        next = c.start + c.count;
      }
      EXPECT_EQ(next, B) << "n = " << n << ", B = " << B;
    }
  }
  EXPECT_EQ(dse::eigen_batch_chunks(65536, 8, 8).size(), 2u);
  EXPECT_EQ(dse::eigen_batch_chunks(30000, 384, 384).size(), 3u);  // 14563 + 14563 + 874
  EXPECT_TRUE(dse::eigen_batch_chunks(3, 46341, 46341).empty());
}

TEST(EigenSolverChunks, FailedCallsAndNonZeroInfoAreRedone) {
  const std::vector<dse::EigenChunk> chunks = {{0, 3}, {3, 3}, {6, 2}};
  std::vector<int> info(8, 0);
  EXPECT_TRUE(dse::eigen_chunks_to_redo(chunks, {0, 0, 0}, info.data()).empty());
  info[4] = 17;  // matrix 4 did not converge: its chunk (the second)
  EXPECT_EQ(dse::eigen_chunks_to_redo(chunks, {0, 0, 0}, info.data()), std::vector<size_t>({1}));
  info[7] = -2;  // an illegal parameter counts too
  EXPECT_EQ(dse::eigen_chunks_to_redo(chunks, {0, 0, 0}, info.data()), std::vector<size_t>({1, 2}));
  info.assign(8, 0);
  EXPECT_EQ(dse::eigen_chunks_to_redo(chunks, {1, 0, 0}, info.data()), std::vector<size_t>({0}));  // a failed status
}

// ---------------------------------------------------------------- segments

TEST(Segments, CoverTheItemsInOrder) {
  EXPECT_EQ(dse::segment_count(0, 512), 0);
  EXPECT_EQ(dse::segment_count(1, 512), 1);
  EXPECT_EQ(dse::segment_count(512, 512), 1);
  EXPECT_EQ(dse::segment_count(513, 512), 2);
  EXPECT_EQ(dse::segment_count(50176, 512), 98);  // the regularizer's whole-batch k-means at (256, 196, 384)
  for (int64_t n : {1, 255, 256, 257, 511, 512, 1568, 50176}) {
    for (int64_t len : {256, 512}) {
      int64_t next = 0;
      for (int64_t s = 0; s < dse::segment_count(n, len); ++s) {
        const dse::Segment seg = dse::segment_bounds(s, n, len);
        EXPECT_EQ(seg.begin, next);
        EXPECT_GT(seg.end, seg.begin);
        EXPECT_LE(seg.end - seg.begin, len);
        for (int64_t i = seg.begin; i < seg.end; i += 97) EXPECT_EQ(dse::segment_of(i, len), s);
        next = seg.end;
      }
      EXPECT_EQ(next, n);
    }
  }
}

TEST(Segments, OneSegmentIsTheSequentialSum) {
  // The segmented order (sequential within a segment, segments added in order from 0.0)
  // equals the plain sequential sum when there is one segment, and is a fixed order otherwise.
  std::vector<double> v(1500);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(static_cast<double>(i)) * 1e3 + 1.0 / (i + 3.0);
  auto segmented = [&](int64_t n, int64_t len) {
    double total = 0.0;
    for (int64_t s = 0; s < dse::segment_count(n, len); ++s) {
      const dse::Segment seg = dse::segment_bounds(s, n, len);
      double part = 0.0;
      for (int64_t i = seg.begin; i < seg.end; ++i) part += v[i];
      total += part;
    }
    return total;
  };
  double sequential = 0.0;
  for (int64_t i = 0; i < 400; ++i) sequential += v[i];
  EXPECT_EQ(segmented(400, dse::kUpdateSegment), sequential);
  EXPECT_EQ(segmented(1500, dse::kUpdateSegment), segmented(1500, dse::kUpdateSegment));
  EXPECT_NEAR(segmented(1500, dse::kUpdateSegment), std::accumulate(v.begin(), v.end(), 0.0), 1e-9);
}

// ---------------------------------------------------------------- k-means rules

namespace {

// The seeding rule of common/kmeans_rules.h written out directly: cum_i = before_b + run_i.
int64_t pick_by_definition(const std::vector<double>& dist2, int64_t init, double u) {
  const int64_t n = static_cast<int64_t>(dist2.size());
  std::vector<double> cum(n);
  double before = 0.0;
  for (int64_t b = 0; b * dse::kSeedBlock < n; ++b) {
    double run = 0.0;
    for (int64_t i = b * dse::kSeedBlock; i < std::min(n, (b + 1) * dse::kSeedBlock); ++i) {
      run += dse::seed_weight(dist2[i], init);
      cum[i] = before + run;
    }
    before += run;
  }
  const double total = before;
  if (!(total > 0.0)) return std::min<int64_t>(static_cast<int64_t>(u * n), n - 1);
  for (int64_t i = 0; i < n; ++i)
    if (cum[i] > u * total) return i;
  for (int64_t i = n - 1; i >= 0; --i)
    if (dist2[i] > 0.0) return i;
  return -1;
}

int64_t pick(const std::vector<double>& dist2, int64_t init, double u) {
  const int64_t n = static_cast<int64_t>(dist2.size());
  std::vector<double> totals(dse::seed_block_count(n));
  for (int64_t b = 0; b < static_cast<int64_t>(totals.size()); ++b)
    totals[b] = dse::seed_block_total(dist2.data(), n, init, b);
  return dse::seed_pick(dist2.data(), n, init, totals.data(), u);
}

}  // namespace

TEST(KmeansRules, UniformPick) {
  EXPECT_EQ(dse::seed_uniform_pick(0.0, 10), 0);
  EXPECT_EQ(dse::seed_uniform_pick(0.0999, 10), 0);
  EXPECT_EQ(dse::seed_uniform_pick(0.1, 10), 1);
  EXPECT_EQ(dse::seed_uniform_pick(0.99999, 10), 9);
  EXPECT_EQ(dse::seed_uniform_pick(1.0 - 1.0 / 9007199254740992.0, 3), 2);
  EXPECT_EQ(dse::seed_uniform_pick(0.5, 1), 0);
}

TEST(KmeansRules, SeedPickFollowsTheBlockedCumulativeRule) {
  // Weights of every magnitude, zero runs across block boundaries, n over three blocks.
  for (int64_t n : {1, 5, 256, 257, 700}) {
    std::vector<double> dist2(n);
    for (int64_t i = 0; i < n; ++i) {
      const double v = std::fabs(std::sin(0.37 * static_cast<double>(i * i + 1))) * std::pow(10.0, (i % 7) - 3);
      dist2[i] = (i % 5 == 1 || (i >= 250 && i < 262)) ? 0.0 : v;
    }
    for (int64_t init : {0, 1}) {
      for (uint64_t c = 0; c < 400; ++c) {
        const double u = dse::uniform01(7, static_cast<uint64_t>(n), c);
        const int64_t got = pick(dist2, init, u);
        ASSERT_EQ(got, pick_by_definition(dist2, init, u)) << "n = " << n << ", u = " << u;
        bool any_positive = false;
        for (double v : dist2) any_positive = any_positive || v > 0.0;
        if (any_positive) ASSERT_GT(dist2[got], 0.0) << "a zero-weight point was drawn";
      }
    }
  }
}

TEST(KmeansRules, ZeroWeightPointsAreNeverPickedEvenAtExactBoundaries) {
  // Integer weights with a power-of-two total: u * total lands exactly on cumulative sums,
  // including the flat steps of zero-weight points, and on block boundaries.
  std::vector<double> dist2(600, 0.0);
  double total = 0.0;
  for (int64_t i = 0; i < 600; ++i) {
    if (i % 3 == 0 && i != 255 && i != 256) dist2[i] = 1.0 + (i % 4);
    total += dist2[i];
  }
  dist2[599] += 1024.0 - total;  // total = 1024
  ASSERT_GT(dist2[599], 0.0);
  for (int64_t step = 0; step < 1024; ++step) {
    const double u = static_cast<double>(step) / 1024.0;
    const int64_t got = pick(dist2, 0, u);
    ASSERT_GT(dist2[got], 0.0) << "u = " << u;
    double cum = 0.0;
    for (int64_t i = 0; i < got; ++i) cum += dist2[i];
    ASSERT_LE(cum, u * 1024.0);               // every earlier point's cumulative weight is <= the target
    ASSERT_GT(cum + dist2[got], u * 1024.0);  // and this one's exceeds it
  }
}

TEST(KmeansRules, AllWeightsZeroUseTheUniformRule) {
  const std::vector<double> zeros(300, 0.0);
  for (uint64_t c = 0; c < 50; ++c) {
    const double u = dse::uniform01(3, 1, c);
    EXPECT_EQ(pick(zeros, 0, u), std::min<int64_t>(static_cast<int64_t>(u * 300), 299));
    EXPECT_EQ(pick(zeros, 1, u), std::min<int64_t>(static_cast<int64_t>(u * 300), 299));
  }
}

TEST(KmeansRules, WeightsDistancesTiesAndUpdate) {
  EXPECT_EQ(dse::seed_weight(9.0, 0), 9.0);
  EXPECT_EQ(dse::seed_weight(9.0, 1), 3.0);
  EXPECT_EQ(dse::seed_weight(0.0, 1), 0.0);
  EXPECT_EQ(dse::seed_weight(1e-300, 1), 1e-150);  // tiny but positive stays positive
  const float a[3] = {1000.25f, -3.5f, 7.0f}, b[3] = {1000.25f, -3.5f, 7.0f}, c[3] = {1000.5f, -3.5f, 7.0f};
  EXPECT_EQ(dse::squared_distance_f64(a, b, 3), 0.0);  // equal points: exactly 0
  EXPECT_EQ(dse::squared_distance_f64(a, c, 3), 0.0625);
  EXPECT_FALSE(dse::nearer(1.0, 1.0));  // a tie keeps the lower index
  EXPECT_TRUE(dse::nearer(0.5, 1.0));
  // The update multiplies by the reciprocal, which is not always the quotient.
  EXPECT_EQ(dse::centroid_from_sum(9.9, dse::inverse_count(3)), 9.9 * (1.0 / 3.0));
  EXPECT_NE(dse::centroid_from_sum(9.9, dse::inverse_count(3)), 9.9 / 3.0);
}

// ---------------------------------------------------------------- css batches (CUDA workspace)

namespace {

// Sizes of P problems of M points in k clusters: cluster 0 of `largest` points, a quarter
// of the others at half the mean, the rest sharing what is left (a realistic spread).
std::vector<int64_t> spread_sizes(int64_t P, int64_t M, int64_t k, int64_t largest) {
  std::vector<int64_t> sizes;
  const int64_t mean = M / k, small = std::max<int64_t>(1, mean / 2), n_small = (k - 1) / 4;
  for (int64_t p = 0; p < P; ++p) {
    std::vector<int64_t> s(k, 0);
    s[0] = largest;
    int64_t left = M - largest;
    for (int64_t j = 1; j <= n_small && left > 0; ++j) left -= (s[j] = std::min(small, left));
    for (int64_t j = n_small + 1; j < k; ++j) {
      const int64_t share = left / (k - j);
      left -= (s[j] = share);
    }
    s[k - 1] += left;
    int64_t total = 0;
    for (int64_t v : s) total += v;
    EXPECT_EQ(total, M);
    sizes.insert(sizes.end(), s.begin(), s.end());
  }
  return sizes;
}

// Worst case: each problem one cluster of M - (k - 1) points and k - 1 singletons.
std::vector<int64_t> worst_sizes(int64_t P, int64_t M, int64_t k) {
  std::vector<int64_t> sizes;
  for (int64_t p = 0; p < P; ++p) {
    sizes.push_back(M - (k - 1));
    for (int64_t j = 1; j < k; ++j) sizes.push_back(1);
  }
  return sizes;
}

void check_plan(const std::vector<int64_t>& sizes, int64_t d, int64_t budget, bool backward) {
  const dse::CssPlan plan = dse::plan_css_batches(sizes.data(), sizes.size(), d, budget, backward);
  std::vector<int> seen(sizes.size(), 0);
  int64_t covered = 0;
  for (const dse::CssBatch& b : plan.batches) {
    EXPECT_EQ(b.begin, covered);
    covered += b.count;
    EXPECT_EQ(b.side, std::min(b.rows, d));
    EXPECT_EQ(b.bytes, dse::css_batch_bytes(b.count, b.rows, d, backward));
    EXPECT_TRUE(b.bytes <= budget || b.count == 1) << b.bytes;
    for (int64_t i = b.begin; i < b.begin + b.count; ++i) {
      const int64_t rows = sizes[plan.order[i]] - 1;
      seen[plan.order[i]] += 1;
      EXPECT_GE(b.rows, rows);
      EXPECT_LT(b.rows, 2 * rows) << "padding more than doubles a cluster";  // same power of two
    }
  }
  EXPECT_EQ(covered, static_cast<int64_t>(plan.order.size()));
  for (size_t c = 0; c < sizes.size(); ++c) EXPECT_EQ(seen[c], sizes[c] >= 2 ? 1 : 0) << c;
}

}  // namespace

TEST(CssBatches, BucketsCoverEveryClusterOnceWithinTheBudget) {
  const std::vector<int64_t> odd = {0, 1, 2, 3, 5, 9, 17, 300, 4, 4, 33, 64, 65, 1, 128, 129, 255};
  for (int64_t budget : {int64_t{1}, int64_t{4096}, int64_t{1} << 20, dse::kCssBatchBudgetBytes})
    for (bool backward : {false, true}) {
      check_plan(odd, 6, budget, backward);
      check_plan(odd, 384, budget, backward);
      check_plan(spread_sizes(16, 1568, 24, 196), 384, budget, backward);
    }
  EXPECT_EQ(dse::css_bucket(1), 1);
  EXPECT_EQ(dse::css_bucket(2), 2);
  EXPECT_EQ(dse::css_bucket(3), 2);
  EXPECT_EQ(dse::css_bucket(4), 3);
  EXPECT_EQ(dse::css_bucket(195), 8);
  EXPECT_EQ(dse::css_bucket(1544), 11);
}

TEST(CssBatches, PaddedRowsDependOnlyOnTheSizes) {
  // The kept basis of a cluster is laid out in its padded side, so the forward and the
  // backward (other budgets, other chunks) must pad every cluster alike.
  const std::vector<int64_t> sizes = spread_sizes(32, 1568, 24, 196);
  auto rows_of = [&](int64_t budget, bool backward) {
    const dse::CssPlan plan = dse::plan_css_batches(sizes.data(), sizes.size(), 384, budget, backward);
    std::vector<int64_t> rows(sizes.size(), 0);
    for (const dse::CssBatch& b : plan.batches)
      for (int64_t i = b.begin; i < b.begin + b.count; ++i) rows[plan.order[i]] = b.rows;
    return rows;
  };
  const std::vector<int64_t> forward = rows_of(dse::kCssBatchBudgetBytes, false);
  EXPECT_EQ(forward, rows_of(dse::kCssBatchBudgetBytes, true));
  EXPECT_EQ(forward, rows_of(1 << 20, false));
  EXPECT_EQ(forward, rows_of(1, true));
}

TEST(CssBatches, WorkspaceAtDseScale) {
  // dse at (B, N, d) = (1024, 196, 384): local clustering P = 1024 problems of M = 196
  // points, k = 3; global clustering P = 128 groups of 8 images, M = 1568, k = 24.
  struct Case {
    const char* name;
    std::vector<int64_t> sizes;
  };
  const int64_t d = 384;
  const Case cases[] = {
      {"local  2x mean (130)", spread_sizes(1024, 196, 3, 130)},
      {"local  worst (194)  ", worst_sizes(1024, 196, 3)},
      {"global 3x mean (196)", spread_sizes(128, 1568, 24, 196)},
      {"global worst (1545) ", worst_sizes(128, 1568, 24)},
  };
  const double GiB = 1024.0 * 1024.0 * 1024.0;
  for (const Case& c : cases) {
    for (bool backward : {false, true}) {
      const int64_t padded = dse::css_padded_bytes(c.sizes.data(), c.sizes.size(), d, backward);
      const dse::CssPlan plan =
          dse::plan_css_batches(c.sizes.data(), c.sizes.size(), d, dse::kCssBatchBudgetBytes, backward);
      std::printf("[ css workspace ] %s %s: padded to the largest %.2f GiB, bucketed %.2f GiB, "
                  "bucketed + chunked peak %.3f GiB in %zu batches\n",
                  c.name, backward ? "backward" : "forward ", padded / GiB, plan.total_bytes / GiB,
                  plan.peak_bytes / GiB, plan.batches.size());
      EXPECT_LE(plan.peak_bytes, dse::kCssBatchBudgetBytes);  // no single cluster is over the budget here
      EXPECT_LE(plan.total_bytes, padded);
    }
  }
  // The global clustering with a realistic spread: several GB padded, a quarter GiB chunked.
  const std::vector<int64_t> global = spread_sizes(128, 1568, 24, 196);
  EXPECT_GT(dse::css_padded_bytes(global.data(), global.size(), d, false), int64_t{2} << 30);
}

TEST(OutputCache, ContiguousOfTheRequestedShapeAndWritableThroughout) {
  // Below the cached size and above it (an odd byte count).
  for (const std::vector<int64_t>& sizes : {std::vector<int64_t>{3, 5, 7}, std::vector<int64_t>{9, 1031, 1027}}) {
    for (const auto dtype : {at::kFloat, at::kDouble}) {
      const at::Tensor like = at::empty(sizes, at::TensorOptions().dtype(dtype)).transpose(0, 2);
      const at::Tensor out = dse::cpu::empty_filled_output_like(like);
      EXPECT_EQ(out.sizes(), like.sizes());
      EXPECT_EQ(out.scalar_type(), dtype);
      EXPECT_TRUE(out.is_contiguous());
      out.copy_(at::arange(out.numel(), out.options()).view(out.sizes()));  // every byte written
      EXPECT_TRUE(at::equal(out.view({-1}), at::arange(out.numel(), out.options())));
    }
  }
  EXPECT_EQ(dse::cpu::empty_filled_output({0, 384}, at::TensorOptions()).numel(), 0);
}

TEST(OutputCache, ReusesFreedBuffersOfTheSameSizeOnlyAndObeysItsLimit) {
  const size_t previous = dse::cpu::set_output_cache_limit(size_t{1} << 30);
  dse::cpu::release_output_cache();
  const std::vector<int64_t> sizes{8, 1024, 1025};  // 33.6 MB of float32
  const size_t bytes = 8 * 1024 * 1025 * 4;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  void* first = nullptr;
  void* second = nullptr;
  {
    at::Tensor a = dse::cpu::empty_filled_output(sizes, f32);
    const at::Tensor b = dse::cpu::empty_filled_output(sizes, f32);
    first = a.data_ptr();
    second = b.data_ptr();
    EXPECT_NE(second, first);  // a is in use
    const at::Tensor view = a.narrow(0, 1, 2);
    a = at::Tensor();
    EXPECT_EQ(dse::cpu::output_cache_stats().idle_blocks, 0u);  // the view keeps a's memory
  }
  EXPECT_EQ(dse::cpu::output_cache_stats().idle_bytes, 2 * bytes);
  {
    const at::Tensor again = dse::cpu::empty_filled_output(sizes, f32);
    EXPECT_TRUE(again.data_ptr() == first || again.data_ptr() == second);  // one of the freed two
    EXPECT_EQ(dse::cpu::output_cache_stats().idle_blocks, 1u);
    const at::Tensor other = dse::cpu::empty_filled_output({8, 1024, 1026}, f32);  // another size
    EXPECT_EQ(dse::cpu::output_cache_stats().idle_blocks, 1u);
  }
  EXPECT_EQ(dse::cpu::set_output_cache_limit(bytes), size_t{1} << 30);
  EXPECT_LE(dse::cpu::output_cache_stats().idle_bytes, bytes);  // trimmed to the new limit at once
  EXPECT_EQ(dse::cpu::set_output_cache_limit(0), bytes);
  EXPECT_EQ(dse::cpu::output_cache_stats().idle_bytes, 0u);
  { const at::Tensor off = dse::cpu::empty_filled_output(sizes, f32); }
  EXPECT_EQ(dse::cpu::output_cache_stats().idle_bytes, 0u);  // limit 0: nothing kept
  dse::cpu::set_output_cache_limit(size_t{1} << 30);
  { const at::Tensor kept = dse::cpu::empty_filled_output(sizes, f32); }
  EXPECT_EQ(dse::cpu::release_output_cache(), bytes);
  EXPECT_EQ(dse::cpu::output_cache_stats().idle_blocks, 0u);
  dse::cpu::set_output_cache_limit(previous);
}
