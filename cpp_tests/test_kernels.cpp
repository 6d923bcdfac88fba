// The CPU kernels called directly and through the dispatcher (torch.ops.dse.*).
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

#include "cpu/kernels.h"

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
