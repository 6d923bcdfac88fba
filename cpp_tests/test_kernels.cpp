// The CPU kernels called directly and through the dispatcher (torch.ops.dse.*).
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <set>
#include <tuple>
#include <vector>

#include "common/kmeans_rules.h"
#include "common/segments.h"
#include "cpu/kernels.h"
#include "cpu/singular_gradient.h"

namespace {

at::Tensor call_effective_rank(const at::Tensor& x, const std::optional<at::Tensor>& index = std::nullopt) {
  using Out = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dse::effective_rank", "")
                       .typed<Out(const at::Tensor&, const std::optional<at::Tensor>&, bool)>();
  return std::get<0>(op.call(x, index, false));
}

at::Tensor rank(const at::Tensor& x) { return std::get<0>(dse::cpu::effective_rank(x)); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_kmeans(const at::Tensor& x, const at::Tensor& counts, int64_t k) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dse::kmeans", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                             int64_t, int64_t, double, int64_t, int64_t)>();
  return op.call(x, counts, k, 20, 1e-4, 0, 0);
}

}  // namespace

TEST(Schemas, AllOpsRegisteredForCpu) {
  for (const char* name : {"dse::kmeans", "dse::cluster_css", "dse::effective_rank",
                           "dse::nearest_other_centroid_distance"}) {
    const auto handle = c10::Dispatcher::singleton().findSchema({name, ""});
    ASSERT_TRUE(handle.has_value()) << name;
    EXPECT_TRUE(handle->hasKernelForDispatchKey(c10::DispatchKey::CPU)) << name;
  }
}

#ifdef DSE_WITH_CUDA
TEST(Schemas, CudaKernelsRegistered) {
  // Built and linked on machines without a GPU too: the registrations must be there.
  for (const char* name : {"dse::kmeans", "dse::nearest_other_centroid_distance",
                           "dse::nearest_other_centroid_distance_backward",
                           "dse::effective_rank", "dse::effective_rank_backward", "dse::cluster_css",
                           "dse::cluster_css_backward"}) {
    const auto handle = c10::Dispatcher::singleton().findSchema({name, ""});
    ASSERT_TRUE(handle.has_value()) << name;
    EXPECT_TRUE(handle->hasKernelForDispatchKey(c10::DispatchKey::CUDA)) << name;
  }
}
#endif

TEST(EffectiveRank, OrthonormalRowsGiveOne) {
  at::manual_seed(1);
  const at::Tensor q = std::get<0>(at::linalg_qr(at::randn({12, 12}, at::kDouble)));
  const at::Tensor x = q.narrow(0, 0, 5).unsqueeze(0);
  EXPECT_NEAR(rank(x).item<double>(), 1.0, 1e-12);
  EXPECT_NEAR(call_effective_rank(x).item<double>(), 1.0, 1e-12);
}

TEST(EffectiveRank, DispatcherMatchesDirectCall) {
  at::manual_seed(2);
  const at::Tensor x = at::randn({4, 7, 11});
  EXPECT_TRUE(at::equal(rank(x), call_effective_rank(x)));
}

TEST(EffectiveRank, IndexReadsRowsInPlace) {
  at::manual_seed(3);
  const at::Tensor table = at::randn({10, 6}, at::kDouble);
  const at::Tensor index = at::tensor({3, 1, 4, 1, 5, 9, 2, 6, 5}, at::kLong).view({3, 3});
  const at::Tensor gathered = table.index_select(0, index.flatten()).view({3, 3, 6});
  EXPECT_TRUE(at::allclose(call_effective_rank(table, index), rank(gathered), 1e-14, 0));
  EXPECT_THROW(call_effective_rank(table, index.clamp_max(3) + 7), c10::Error);  // row 10 is out of range
  EXPECT_THROW(call_effective_rank(gathered, index), c10::Error);                // x must be a 2-D table
}

// A tall matrix read block by block (cpu/singular_gradient.h): 3000 rows are 12 blocks in 8
// partial sums; 200 columns take gram_upper's column blocks.
TEST(Streamed, GramAndProductMatchOneProductAndDoNotDependOnThreads) {
  at::manual_seed(4);
  const int64_t rows = 3000, cols = 200;
  ASSERT_TRUE(dse::cpu::streamed(rows, cols));
  const at::Tensor z = at::randn({rows, cols}, at::kDouble), w = at::randn({cols, cols}, at::kDouble);
  const double* zp = z.const_data_ptr<double>();
  const dse::cpu::RowBlockFill fill = [&](int64_t r0, int64_t r1, double* dst) {
    std::copy(zp + r0 * cols, zp + r1 * cols, dst);
  };
  auto gram = [&] {
    at::Tensor g = at::zeros({cols, cols}, at::kDouble);
    dse::cpu::streamed_gram(rows, cols, fill, g.data_ptr<double>(), cols);
    return g.triu();  // the upper triangle is the result
  };
  auto product = [&] {
    at::Tensor y = at::full({rows, cols}, -1.0, at::kDouble);
    double* yp = y.data_ptr<double>();
    dse::cpu::streamed_product(rows, cols, fill, w.const_data_ptr<double>(), cols,
                               [&](int64_t r0, int64_t r1, const double* src) {
                                 std::copy(src, src + (r1 - r0) * cols, yp + r0 * cols);
                               });
    return y;
  };
  const int threads = at::get_num_threads();
  const at::Tensor g = gram(), y = product();
  EXPECT_TRUE(at::allclose(g, at::mm(z.t(), z).triu(), 1e-12, 1e-10));
  EXPECT_TRUE(at::allclose(y, at::mm(z, w), 1e-12, 1e-10));
  at::set_num_threads(1);
  const at::Tensor g1 = gram(), y1 = product();
  at::set_num_threads(threads);
  EXPECT_TRUE(at::equal(g, g1));
  EXPECT_TRUE(at::equal(y, y1));
}

TEST(Streamed, EffectiveRankWithKeptBasisAndBackward) {
  // The streamed forward (keep_basis) and backward against the whole-matrix paths.
  at::manual_seed(5);
  const at::Tensor x = at::randn({1, 700, 200}, at::kDouble) * at::linspace(0.1, 2.0, 200, at::kDouble);
  const auto [plain, no_eig, no_vec] = dse::cpu::effective_rank(x, std::nullopt, false);
  const auto [kept, eig, vec] = dse::cpu::effective_rank(x, std::nullopt, true);
  EXPECT_TRUE(at::allclose(kept, plain, 1e-12, 0));
  const at::Tensor grad = at::full({1}, 0.5, at::kDouble);
  const at::Tensor with_basis = dse::cpu::effective_rank_backward(grad, x, std::nullopt, eig, vec);
  const at::Tensor recomputed = dse::cpu::effective_rank_backward(grad, x, std::nullopt);
  EXPECT_TRUE(at::allclose(with_basis, recomputed, 1e-10, 1e-14));
  // dL/dX = X V f(L) V^T from one eigen-decomposition of the full Gram.
  const auto [lam, v] = at::linalg_eigh(at::mm(x[0].t(), x[0]));
  const at::Tensor sigma = lam.clamp_min(0).sqrt(), p = sigma / sigma.sum();
  const at::Tensor entropy = -(p * p.log()).sum();
  const at::Tensor h = 0.5 / 200 * entropy.exp() * (-p.log() - entropy) / sigma.sum();
  const at::Tensor expected = at::mm(x[0], at::mm(v * (h / sigma), v.t()));
  EXPECT_TRUE(at::allclose(with_basis[0], expected, 1e-9, 1e-14));
}

TEST(ClusterCss, TwoPointsAndSkippedClusters) {
  // cluster 0: two points at distance 5 -> one singular value 5 / sqrt(2); cluster 1: one point.
  const at::Tensor x = at::tensor({0.0, 0.0, 3.0, 4.0, 1.0, 1.0}, at::kDouble).view({1, 3, 2});
  const at::Tensor labels = at::tensor({0, 0, 1}, at::kLong).view({1, 3});
  const auto [values, counts, eig, vec] = dse::cpu::cluster_css(x, labels, 3);
  EXPECT_NEAR(values[0][0].item<double>(), 5.0 / std::sqrt(2.0) / std::sqrt(2.0), 1e-14);
  EXPECT_EQ(values[0][1].item<double>(), 0.0);
  EXPECT_EQ(counts[0][0].item<int64_t>(), 2);
  EXPECT_EQ(counts[0][1].item<int64_t>(), 1);
  EXPECT_EQ(counts[0][2].item<int64_t>(), 0);
}

TEST(Kmeans, SeparatedClustersThroughTheDispatcher) {
  at::manual_seed(3);
  const at::Tensor centres = at::tensor({0.0, 0.0, 10.0, 0.0, 0.0, 10.0}, at::kDouble).view({3, 2});
  const at::Tensor truth = at::arange(60, at::kLong).remainder(3);
  const at::Tensor x = (centres.index_select(0, truth) + 0.1 * at::randn({60, 2}, at::kDouble)).unsqueeze(0);
  const auto [c, labels, iters] = call_kmeans(x, at::full({1}, 60, at::kLong), 3);
  // Same partition as the truth: each true cluster maps to one label.
  for (int64_t j = 0; j < 3; ++j) {
    const at::Tensor l = labels[0].masked_select(truth.eq(j));
    EXPECT_TRUE(l.eq(l[0]).all().item<bool>());
  }
  EXPECT_EQ(std::get<0>(at::_unique(labels)).numel(), 3);
  EXPECT_GE(iters[0].item<int64_t>(), 1);
  const auto direct = dse::cpu::kmeans(x, at::full({1}, 60, at::kLong), 3, 20, 1e-4, 0, 0);
  EXPECT_TRUE(at::equal(std::get<1>(direct), labels));
}

TEST(Kmeans, RejectsTooFewPoints) {
  const at::Tensor x = at::randn({2, 5, 3});
  EXPECT_THROW(dse::cpu::kmeans(x, at::tensor({5, 2}, at::kLong), 3, 10, 1e-4, 0, 0), c10::Error);
}

TEST(NearestOther, IsSecondNearestCentroid) {
  const at::Tensor x = at::tensor({0.0, 0.0}, at::kDouble).view({1, 1, 2});
  const at::Tensor c = at::tensor({0.0, 1.0, 3.0, 0.0, 0.0, -2.0}, at::kDouble).view({1, 3, 2});
  const at::Tensor labels = at::zeros({1, 1}, at::kLong);
  EXPECT_NEAR(dse::cpu::nearest_other_centroid_distance(x, c, labels, std::nullopt).item<double>(), 2.0, 1e-15);
  const at::Tensor valid = at::tensor({1, 1, 0}, at::kLong).to(at::kBool).view({1, 3});
  EXPECT_NEAR(dse::cpu::nearest_other_centroid_distance(x, c, labels, valid).item<double>(), 3.0, 1e-15);
}

// ---------------------------------------------------------------- k-means ties (common/kmeans_rules.h)

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> cpu_kmeans(const at::Tensor& x, int64_t k, int64_t max_iters,
                                                          int64_t seed, int64_t init) {
  return dse::cpu::kmeans(x, at::full({x.size(0)}, x.size(1), at::kLong), k, max_iters, 0.0, seed, init);
}

}  // namespace

TEST(KmeansTies, EquidistantPointsGoToTheLowestIndex) {
  // Small integer coordinates: every distance is exact in any arithmetic, so ties are real
  // ties (e.g. seeds (0, 0) and (2, 0) and the point (1, 3)) and must go to the lower index.
  std::vector<double> grid;
  for (int a = 0; a < 5; ++a)
    for (int b = 0; b < 5; ++b) grid.insert(grid.end(), {static_cast<double>(a), static_cast<double>(b)});
  for (auto dtype : {at::kFloat, at::kDouble}) {
    const at::Tensor x = at::tensor(grid, at::kDouble).view({1, 25, 2}).to(dtype);
    int64_t ties = 0;
    for (int64_t seed = 0; seed < 40; ++seed)
      for (int64_t init : {0, 1}) {
        const auto [c, labels, iters] = cpu_kmeans(x, 4, 0, seed, init);
        const at::Tensor cd = c[0].to(at::kDouble), xd = x[0].to(at::kDouble);
        for (int64_t i = 0; i < 25; ++i) {
          const at::Tensor dist = (xd[i].unsqueeze(0) - cd).square().sum(1);
          const double best = dist.min().item<double>();
          const int64_t lowest = dist.eq(best).nonzero()[0][0].item<int64_t>();
          ties += dist.eq(best).sum().item<int64_t>() > 1;
          ASSERT_EQ(labels[0][i].item<int64_t>(), lowest) << "seed " << seed << ", point " << i;
        }
      }
    EXPECT_GT(ties, 100);  // the case is made of ties
  }
}

TEST(KmeansTies, CoincidentCentroidsTakeNoPoints) {
  // Fewer distinct points than k: two seeds are duplicates (the uniform rule), and every
  // point goes to the lowest-numbered of the centroids equal to it, whatever the GEMM's
  // rounding of the coincident rows (random coordinates, not exactly representable sums).
  at::manual_seed(5);
  const at::Tensor two = at::randn({2, 6}, at::kDouble) * 3.7;
  const at::Tensor x = two.repeat({7, 1}).unsqueeze(0);  // 14 points, 2 distinct
  for (auto dtype : {at::kFloat, at::kDouble}) {
    const at::Tensor xt = x.to(dtype);
    for (int64_t seed = 0; seed < 30; ++seed) {
      const auto [c, labels, iters] = cpu_kmeans(xt, 5, 0, seed, 0);
      // the seeds hold both distinct points (never a duplicate while the other weighs more)
      std::set<int64_t> which;
      for (int64_t j = 0; j < 5; ++j) which.insert(at::equal(c[0][j], xt[0][0]) ? 0 : at::equal(c[0][j], xt[0][1]) ? 1 : -1);
      ASSERT_EQ(which, std::set<int64_t>({0, 1})) << "seed " << seed;
      for (int64_t i = 0; i < 14; ++i) {
        int64_t lowest = -1;
        for (int64_t j = 0; j < 5 && lowest < 0; ++j)
          if (at::equal(c[0][j], xt[0][i])) lowest = j;
        ASSERT_EQ(labels[0][i].item<int64_t>(), lowest) << "seed " << seed << ", point " << i;
      }
    }
  }
}

TEST(KmeansTies, SeedingNeverDrawsADuplicateWhileOthersWeighMore) {
  // 60 copies of one point near 1000 and 7 others that differ from it in one coordinate by
  // a quarter or more: in float32 the GEMM distance of a copy to itself is rounding noise
  // of about 2 (|x|^2 ~ 1.6e7), far above the others' true weights (>= 1/16). The copies
  // must still weigh exactly 0, so k = 8 seeds are the 8 distinct points.
  at::manual_seed(11);
  const int64_t d = 16;
  const at::Tensor base = (at::randn({d}, at::kDouble) + 1000.0).to(at::kFloat).to(at::kDouble);
  std::vector<at::Tensor> rows(60, base);
  std::vector<at::Tensor> distinct = {base};
  for (int64_t m = 0; m < 7; ++m) {
    at::Tensor other = base.clone();
    other[m] += 0.25 * static_cast<double>(m + 1);
    distinct.push_back(other);
    rows.insert(rows.begin() + 8 * m + 3, other);
  }
  const at::Tensor x = at::stack(rows).unsqueeze(0);
  for (auto dtype : {at::kFloat, at::kDouble}) {
    const at::Tensor xt = x.to(dtype);
    for (int64_t seed = 0; seed < 40; ++seed)
      for (int64_t init : {0, 1}) {
        const auto [c, labels, iters] = cpu_kmeans(xt, 8, 0, seed, init);
        std::set<int64_t> found;
        for (int64_t j = 0; j < 8; ++j)
          for (int64_t q = 0; q < 8; ++q)
            if (at::equal(c[0][j].to(at::kDouble), distinct[q])) found.insert(q);
        ASSERT_EQ(found.size(), 8u) << "seed " << seed << ", init " << init << ": a duplicate seed";
      }
  }
}

TEST(KmeansTies, CentroidUpdateIsTheSegmentedSumTimesTheReciprocal) {
  // M > kUpdateSegment: the CPU adds each cluster's members in segments (the order the CUDA
  // kernel uses), then multiplies by 1 / n. One Lloyd update from the seeds, recomputed here.
  at::manual_seed(13);
  const int64_t M = 1300, d = 5, k = 4;
  const at::Tensor x = at::randn({1, M, d}, at::kDouble) * 10.0 + 0.1;
  const auto [c0, l0, it0] = cpu_kmeans(x, k, 0, 3, 0);  // the seeds and their labels
  const auto [c1, l1, it1] = cpu_kmeans(x, k, 1, 3, 0);  // one update from them
  ASSERT_EQ(it1[0].item<int64_t>(), 1);
  const double* xp = x.const_data_ptr<double>();
  const int64_t* lp = l0.const_data_ptr<int64_t>();
  for (int64_t j = 0; j < k; ++j) {
    int64_t members = 0;
    for (int64_t i = 0; i < M; ++i) members += lp[i] == j;
    ASSERT_GT(members, 0);
    for (int64_t t = 0; t < d; ++t) {
      double total = 0.0;
      for (int64_t s = 0; s < dse::segment_count(M, dse::kUpdateSegment); ++s) {
        const dse::Segment seg = dse::segment_bounds(s, M, dse::kUpdateSegment);
        double part = 0.0;
        for (int64_t i = seg.begin; i < seg.end; ++i)
          if (lp[i] == j) part += xp[i * d + t];
        total += part;
      }
      EXPECT_EQ(c1[0][j][t].item<double>(), total * (1.0 / static_cast<double>(members))) << j << ", " << t;
    }
  }
}
