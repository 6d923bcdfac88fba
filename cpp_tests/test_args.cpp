// The argument rules of every operator (csrc/common/<op>_args.h).
//
// Bad arguments go through the dispatcher (torch.ops.dse.*, CPU kernels) and must
// raise exactly the error of the op's argument check, which the CUDA kernel calls
// too. The CUDA kernels cannot run here, but the checks are plain host code: the
// rules that compare devices take x's device as a parameter, and are exercised
// below with CPU tensors and device = cuda:0, as a CUDA kernel would see them.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "common/cluster_css_args.h"
#include "common/effective_rank_args.h"
#include "common/kmeans_args.h"
#include "common/nearest_other_centroid_distance_args.h"

namespace {

using OptTensor = std::optional<at::Tensor>;
constexpr auto kCpu = c10::DeviceType::CPU;
constexpr auto kCuda = c10::DeviceType::CUDA;
const c10::Device gpu("cuda:0");

// The message of the c10::Error f raises, or "<no error>".
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.msg();
  }
  return "<no error>";
}

#define EXPECT_ERROR(call, part)                                          \
  do {                                                                    \
    const std::string dse_message = error_of([&] { (void)(call); });      \
    EXPECT_NE(dse_message.find(part), std::string::npos) << dse_message;  \
  } while (0)

#define EXPECT_NO_ERROR(call) EXPECT_EQ(error_of([&] { (void)(call); }), "<no error>")

// One bad call: through the dispatcher, and of the argument check alone.
struct Case {
  const char* what;
  std::function<void()> through_op, check_only;
  const char* expected;  // a part of the message
};

void expect_same_errors(const std::vector<Case>& cases) {
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string via_op = error_of(c.through_op), via_check = error_of(c.check_only);
    EXPECT_NE(via_op.find(c.expected), std::string::npos) << via_op;
    EXPECT_EQ(via_op, via_check);
  }
}

// ---------------------------------------------------------------- the ops, through the dispatcher
c10::Dispatcher& dispatcher() { return c10::Dispatcher::singleton(); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> kmeans(const at::Tensor& x, const at::Tensor& counts, int64_t k,
                                                      int64_t max_iters = 5, double tol = 1e-4, int64_t init = 0) {
  using Out = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
  static auto op = dispatcher().findSchemaOrThrow("dse::kmeans", "").typed<Out(
      const at::Tensor&, const at::Tensor&, int64_t, int64_t, double, int64_t, int64_t)>();
  return op.call(x, counts, k, max_iters, tol, 0, init);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cluster_css(const at::Tensor& x, const at::Tensor& labels,
                                                                       int64_t k, bool keep_basis = false) {
  using Out = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
  static auto op = dispatcher().findSchemaOrThrow("dse::cluster_css", "").typed<Out(
      const at::Tensor&, const at::Tensor&, int64_t, bool, const OptTensor&)>();
  return op.call(x, labels, k, keep_basis, std::nullopt);
}

at::Tensor cluster_css_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& labels, int64_t k,
                                const OptTensor& eig = std::nullopt, const OptTensor& vec = std::nullopt) {
  static auto op = dispatcher().findSchemaOrThrow("dse::cluster_css_backward", "").typed<at::Tensor(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, const OptTensor&, const OptTensor&,
      const OptTensor&)>();
  return op.call(grad, x, labels, k, eig, vec, std::nullopt);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> effective_rank(const at::Tensor& x,
                                                              const OptTensor& index = std::nullopt,
                                                              bool keep_basis = false) {
  static auto op = dispatcher().findSchemaOrThrow("dse::effective_rank", "").typed<
      std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const OptTensor&, bool)>();
  return op.call(x, index, keep_basis);
}

at::Tensor effective_rank_backward(const at::Tensor& grad, const at::Tensor& x, const OptTensor& index = std::nullopt,
                                   const OptTensor& eig = std::nullopt, const OptTensor& vec = std::nullopt) {
  static auto op = dispatcher().findSchemaOrThrow("dse::effective_rank_backward", "").typed<at::Tensor(
      const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&)>();
  return op.call(grad, x, index, eig, vec);
}

at::Tensor nearest(const at::Tensor& x, const at::Tensor& c, const at::Tensor& labels, const OptTensor& valid) {
  static auto op = dispatcher().findSchemaOrThrow("dse::nearest_other_centroid_distance", "").typed<at::Tensor(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&)>();
  return op.call(x, c, labels, valid);
}

std::tuple<at::Tensor, at::Tensor> nearest_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& c,
                                                    const at::Tensor& labels, const OptTensor& valid) {
  static auto op = dispatcher().findSchemaOrThrow("dse::nearest_other_centroid_distance_backward", "").typed<
      std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const OptTensor&)>();
  return op.call(grad, x, c, labels, valid);
}

// P = 2 problems of M = 10 points in d = 3 dimensions, k = 3 clusters.
at::Tensor points() { return at::randn({2, 10, 3}, at::kDouble); }
at::Tensor good_labels() { return at::arange(20, at::kLong).remainder(3).view({2, 10}); }

}  // namespace

// ---------------------------------------------------------------- kmeans
TEST(KmeansArgs, SameErrorThroughTheOpAndTheCheck) {
  const at::Tensor x = points(), counts = at::full({2}, 10, at::kLong);
  auto check = [](const at::Tensor& x, const at::Tensor& counts, int64_t k, int64_t max_iters = 5, double tol = 1e-4,
                  int64_t init = 0) { return dse::check_kmeans_args(x, counts, k, max_iters, tol, init, kCpu); };
  expect_same_errors({
      {"2-D x", [&] { kmeans(x[0], counts, 3); }, [&] { check(x[0], counts, 3); }, "x must be 3-D"},
      {"int x", [&] { kmeans(x.to(at::kInt), counts, 3); }, [&] { check(x.to(at::kInt), counts, 3); },
       "x must be float32 or float64, got Int"},
      {"empty x", [&] { kmeans(x.narrow(1, 0, 0), counts, 3); }, [&] { check(x.narrow(1, 0, 0), counts, 3); },
       "x must not be empty"},
      {"counts shape", [&] { kmeans(x, counts.view({2, 1}), 3); }, [&] { check(x, counts.view({2, 1}), 3); },
       "counts must have shape (P,) = (2,)"},
      {"counts dtype", [&] { kmeans(x, counts.to(at::kInt), 3); }, [&] { check(x, counts.to(at::kInt), 3); },
       "counts must be int64, got Int"},
      {"too few points", [&] { kmeans(x, at::tensor({10, 2}, at::kLong), 3); },
       [&] { check(x, at::tensor({10, 2}, at::kLong), 3); },
       "problem 1 has counts[1] = 2 points; need between k = 3 and M = 10"},
      {"too many points", [&] { kmeans(x, at::tensor({11, 10}, at::kLong), 3); },
       [&] { check(x, at::tensor({11, 10}, at::kLong), 3); }, "problem 0 has counts[0] = 11 points"},
      {"k", [&] { kmeans(x, counts, 0); }, [&] { check(x, counts, 0); }, "k must be >= 1, got 0"},
      {"max_iters", [&] { kmeans(x, counts, 3, -1); }, [&] { check(x, counts, 3, -1); }, "max_iters must be >= 0"},
      {"tol", [&] { kmeans(x, counts, 3, 5, -1.0); }, [&] { check(x, counts, 3, 5, -1.0); }, "tol must be >= 0"},
      {"init", [&] { kmeans(x, counts, 3, 5, 1e-4, 2); }, [&] { check(x, counts, 3, 5, 1e-4, 2); },
       "init must be 0 (D^2 sampling) or 1 (D sampling), got 2"},
  });
  EXPECT_NO_ERROR(kmeans(x, counts, 3));
}

TEST(KmeansArgs, CountsOnTheCpuOrOnXsDevice) {
  // Rule (both devices): counts may be on the CPU or on x's device. CPU counts are checked
  // on the host by every kernel (no pending check) and returned where they are.
  const at::Tensor counts = at::tensor({10, 7}, at::kLong);
  dse::PendingChecks pending;
  const at::Tensor host = dse::check_kmeans_counts(counts, 2, 10, 3, gpu, pending, "kmeans");  // x on cuda:0
  EXPECT_TRUE(host.device().is_cpu());
  EXPECT_TRUE(at::equal(host, counts));
  EXPECT_TRUE(pending.empty());
  EXPECT_NO_ERROR(dse::check_kmeans_counts(counts, 2, 10, 3, c10::Device(c10::kCPU), pending, "kmeans"));
  // Anywhere else: refused before its values are read.
  EXPECT_ERROR(dse::check_kmeans_counts(counts.to(at::kMeta), 2, 10, 3, gpu, pending, "kmeans"),
               "dse::kmeans: counts is on meta but must be on the CPU or on x's device (cuda:0)");
  // CPU values are checked the same way whatever the device of x.
  EXPECT_ERROR(dse::check_kmeans_counts(at::tensor({10, 2}, at::kLong), 2, 10, 3, gpu, pending, "kmeans"),
               "need between k = 3 and M = 10");
  // The CUDA kernel refuses a CPU x (what the dispatcher does with CPU x and CUDA counts).
  EXPECT_ERROR(dse::check_kmeans_args(points(), counts, 3, 5, 1e-4, 0, kCuda),
               "dse::kmeans: this is the CUDA kernel but x is on cpu");
}

// ---------------------------------------------------------------- cluster_css
TEST(ClusterCssArgs, SameErrorThroughTheOpAndTheCheck) {
  const at::Tensor x = points(), labels = good_labels();
  auto check = [](const at::Tensor& x, const at::Tensor& labels, int64_t k) {
    return dse::check_cluster_css_args(x, labels, k, std::nullopt, kCpu);
  };
  expect_same_errors({
      {"2-D x", [&] { cluster_css(x[0], labels, 3); }, [&] { check(x[0], labels, 3); }, "x must be 3-D"},
      {"labels shape", [&] { cluster_css(x, labels.narrow(1, 0, 9), 3); }, [&] { check(x, labels.narrow(1, 0, 9), 3); },
       "dse::cluster_css: labels must have shape (P, M) = (2, 10), got [2, 9]"},
      {"labels dtype", [&] { cluster_css(x, labels.to(at::kInt), 3); }, [&] { check(x, labels.to(at::kInt), 3); },
       "labels must be int64, got Int"},
      {"labels range", [&] { cluster_css(x, labels + 5, 3); }, [&] { check(x, labels + 5, 3); },
       "labels must lie in [-1, 3), got [5, 7]"},
      {"labels below -1", [&] { cluster_css(x, labels - 2, 3); }, [&] { check(x, labels - 2, 3); },
       "labels must lie in [-1, 3), got [-2, 0]"},
      {"k", [&] { cluster_css(x, labels, 0); }, [&] { check(x, labels, 0); }, "k must be >= 1, got 0"},
  });
  EXPECT_NO_ERROR(cluster_css(x, labels, 3));
}

TEST(ClusterCssArgs, BackwardSameErrorThroughTheOpAndTheCheck) {
  const at::Tensor x = points(), labels = good_labels(), grad = at::ones({2, 3}, at::kDouble);
  const auto [values, counts, eig, vec] = cluster_css(x, labels, 3, /*keep_basis=*/true);
  ASSERT_EQ(eig.sizes(), at::IntArrayRef({2, 3, 3}));  // S = min(M - 1, d) = 3
  auto check = [&](const at::Tensor& g, const OptTensor& e, const OptTensor& v) {
    return dse::check_cluster_css_backward_args(g, x, labels, 3, e, v, std::nullopt, kCpu);
  };
  auto op = [&](const at::Tensor& g, const OptTensor& e, const OptTensor& v) {
    return cluster_css_backward(g, x, labels, 3, e, v);
  };
  const at::Tensor e32 = eig.to(at::kFloat), v32 = vec.to(at::kFloat), empty = at::empty({0}, at::kDouble);
  const at::Tensor short_eig = eig.narrow(2, 0, 2), short_vec = vec.narrow(2, 0, 2).narrow(3, 0, 2);
  expect_same_errors({
      {"grad shape", [&] { op(grad[0], eig, vec); }, [&] { check(grad[0], eig, vec); },
       "dse::cluster_css_backward: grad must have shape (P, k) = [2, 3], got [3]"},
      {"grad dtype", [&] { op(grad.to(at::kLong), eig, vec); }, [&] { check(grad.to(at::kLong), eig, vec); },
       "grad must be a floating tensor, got Long"},
      {"float32 eigenvalues", [&] { op(grad, e32, vec); }, [&] { check(grad, e32, vec); },
       "eigenvalues must be float64 (as the forward with keep_basis=True returns them), got Float"},
      {"float32 eigenvectors", [&] { op(grad, eig, v32); }, [&] { check(grad, eig, v32); },
       "eigenvectors must be float64"},
      {"eigenvalues alone", [&] { op(grad, eig, std::nullopt); }, [&] { check(grad, eig, std::nullopt); },
       "eigenvalues given without eigenvectors"},
      {"eigenvectors alone", [&] { op(grad, empty, vec); }, [&] { check(grad, empty, vec); },
       "eigenvectors given without eigenvalues"},
      {"basis shape", [&] { op(grad, short_eig, short_vec); }, [&] { check(grad, short_eig, short_vec); },
       "the kept basis must be eigenvalues of shape [2, 3, 3] and eigenvectors of shape [2, 3, 3, 3] "
       "((P, k, S) and (P, k, S, S), S = min(M - 1, d)), got [2, 3, 2] and [2, 3, 2, 2]"},
      {"labels range", [&] { cluster_css_backward(grad, x, labels + 1, 3); },
       [&] { dse::check_cluster_css_backward_args(grad, x, labels + 1, 3, std::nullopt, std::nullopt, std::nullopt, kCpu); },
       "dse::cluster_css_backward: labels must lie in [-1, 3)"},
  });
  // The kept basis and a recomputed one give the same gradient; empty tensors mean "recompute".
  // The two come from different eigensolvers (LAPACK in the forward, the interleaved one for these
  // small clusters in the backward), equally accurate: both Gram-based, so their rounding is
  // amplified by (sigma_max / sigma_min)^2 of a cluster, which random 3 x 3 clusters can make large.
  // Hence a seed, and a tolerance relative to the largest entry.
  at::manual_seed(7);
  const at::Tensor y = points();
  const auto [y_values, y_counts, y_eig, y_vec] = cluster_css(y, labels, 3, /*keep_basis=*/true);
  const at::Tensor kept = cluster_css_backward(grad, y, labels, 3, y_eig, y_vec);
  const at::Tensor fresh = cluster_css_backward(grad, y, labels, 3);
  EXPECT_LT((kept - fresh).abs().max().item<double>(), 1e-12 * fresh.abs().max().item<double>());
  EXPECT_TRUE(at::equal(cluster_css_backward(grad, y, labels, 3, empty, empty), fresh));
}

TEST(ClusterCssArgs, OnePointPerProblemKeepsEmptyBases) {
  // M == 1: no cluster has 2 points, S = min(M - 1, d) = 0 (the CUDA kernel returns the same shapes).
  const at::Tensor x = at::randn({2, 1, 4}, at::kDouble), labels = at::zeros({2, 1}, at::kLong);
  const auto [values, counts, eig, vec] = cluster_css(x, labels, 3, /*keep_basis=*/true);
  EXPECT_EQ(eig.sizes(), at::IntArrayRef({2, 3, 0}));
  EXPECT_EQ(vec.sizes(), at::IntArrayRef({2, 3, 0, 0}));
  EXPECT_EQ(values.abs().sum().item<double>(), 0.0);
  const at::Tensor g = cluster_css_backward(at::ones({2, 3}, at::kDouble), x, labels, 3, eig, vec);
  EXPECT_EQ(g.abs().sum().item<double>(), 0.0);
}

// ---------------------------------------------------------------- effective_rank
TEST(EffectiveRankArgs, SameErrorThroughTheOpAndTheCheck) {
  const at::Tensor x = at::randn({4, 5, 6}, at::kDouble), table = at::randn({10, 6}, at::kDouble);
  const at::Tensor index = at::arange(12, at::kLong).view({4, 3});
  auto check = [](const at::Tensor& x, const OptTensor& index) {
    return dse::check_effective_rank_args(x, index, kCpu);
  };
  expect_same_errors({
      {"2-D x", [&] { effective_rank(table); }, [&] { check(table, std::nullopt); }, "x must be 3-D"},
      {"long x", [&] { effective_rank(x.to(at::kLong)); }, [&] { check(x.to(at::kLong), std::nullopt); },
       "x must be float32 or float64, got Long"},
      {"3-D x with index", [&] { effective_rank(x, index); }, [&] { check(x, index); },
       "with index, x must be a 2-D (rows, dim) table, got shape [4, 5, 6]"},
      {"empty table", [&] { effective_rank(table.narrow(0, 0, 0), index); },
       [&] { check(table.narrow(0, 0, 0), index); }, "x must not be empty"},
      {"index dtype", [&] { effective_rank(table, index.to(at::kInt)); }, [&] { check(table, index.to(at::kInt)); },
       "index must be a non-empty 2-D int64 tensor (matrices, rows), got Int of shape [4, 3]"},
      {"1-D index", [&] { effective_rank(table, index.flatten()); }, [&] { check(table, index.flatten()); },
       "index must be a non-empty 2-D int64 tensor"},
      {"index range", [&] { effective_rank(table, index); }, [&] { check(table, index); },
       "index must lie in [0, 10) (the rows of x), got [0, 11]"},
      {"negative index", [&] { effective_rank(table, index - 1); }, [&] { check(table, index - 1); },
       "index must lie in [0, 10) (the rows of x), got [-1, 10]"},
  });
  EXPECT_NO_ERROR(effective_rank(table, index.remainder(10)));
}

TEST(EffectiveRankArgs, BackwardSameErrorThroughTheOpAndTheCheck) {
  const at::Tensor x = at::randn({4, 5, 6}, at::kDouble), grad = at::ones({4}, at::kDouble);
  const auto [values, eig, vec] = effective_rank(x, std::nullopt, /*keep_basis=*/true);
  auto check = [&](const at::Tensor& g, const OptTensor& e, const OptTensor& v) {
    return dse::check_effective_rank_backward_args(g, x, std::nullopt, e, v, kCpu);
  };
  auto op = [&](const at::Tensor& g, const OptTensor& e, const OptTensor& v) {
    return effective_rank_backward(g, x, std::nullopt, e, v);
  };
  const at::Tensor e32 = eig.to(at::kFloat), v32 = vec.to(at::kFloat);
  expect_same_errors({
      {"grad shape", [&] { op(grad.view({2, 2}), eig, vec); }, [&] { check(grad.view({2, 2}), eig, vec); },
       "dse::effective_rank_backward: grad must have shape (P,) = [4], got [2, 2]"},
      {"grad dtype", [&] { op(grad.to(at::kBool), eig, vec); }, [&] { check(grad.to(at::kBool), eig, vec); },
       "grad must be a floating tensor, got Bool"},
      {"float32 basis", [&] { op(grad, e32, v32); }, [&] { check(grad, e32, v32); },
       "dse::effective_rank_backward: eigenvalues must be float64"},
      {"eigenvalues alone", [&] { op(grad, eig, std::nullopt); }, [&] { check(grad, eig, std::nullopt); },
       "eigenvalues given without eigenvectors"},
      {"basis shape", [&] { op(grad, eig.narrow(0, 0, 3), vec.narrow(0, 0, 3)); },
       [&] { check(grad, eig.narrow(0, 0, 3), vec.narrow(0, 0, 3)); },
       "the kept basis must be eigenvalues of shape [4, 5] and eigenvectors of shape [4, 5, 5] "
       "((P, S) and (P, S, S), S = min(m, d)), got [3, 5] and [3, 5, 5]"},
  });
  EXPECT_TRUE(at::allclose(op(grad, eig, vec), op(grad, std::nullopt, std::nullopt), 1e-10, 1e-12));
  // With index: grad follows the index's matrices, and the gradient is shaped like the table.
  const at::Tensor table = x.reshape({20, 6}), index = at::arange(20, at::kLong).view({4, 5});
  EXPECT_ERROR(effective_rank_backward(at::ones({5}, at::kDouble), table, index),
               "grad must have shape (P,) = [4], got [5]");
  EXPECT_EQ(effective_rank_backward(grad, table, index).sizes(), table.sizes());
}

// ---------------------------------------------------------------- nearest_other_centroid_distance
TEST(NearestOtherArgs, SameErrorThroughTheOpAndTheCheck) {
  const at::Tensor x = points(), c = at::randn({2, 3, 3}, at::kDouble), labels = good_labels();
  const at::Tensor valid = at::ones({2, 3}, at::kBool);
  auto check = [](const at::Tensor& x, const at::Tensor& c, const at::Tensor& labels, const OptTensor& valid) {
    return dse::check_nearest_args(x, c, labels, valid, kCpu);
  };
  expect_same_errors({
      {"2-D x", [&] { nearest(x[0], c, labels, valid); }, [&] { check(x[0], c, labels, valid); }, "x must be 3-D"},
      {"centroids shape", [&] { nearest(x, c.narrow(2, 0, 2), labels, valid); },
       [&] { check(x, c.narrow(2, 0, 2), labels, valid); },
       "centroids must have shape (P, k, d) with P = 2 and d = 3, got [2, 3, 2]"},
      {"centroids dtype", [&] { nearest(x, c.to(at::kFloat), labels, valid); },
       [&] { check(x, c.to(at::kFloat), labels, valid); }, "centroids must have x's dtype Double, got Float"},
      {"no centroids", [&] { nearest(x, c.narrow(1, 0, 0), labels, valid); },
       [&] { check(x, c.narrow(1, 0, 0), labels, valid); }, "centroids must not be empty"},
      {"labels range", [&] { nearest(x, c, labels - 2, valid); }, [&] { check(x, c, labels - 2, valid); },
       "labels must lie in [-1, 3), got [-2, 0]"},
      {"valid dtype", [&] { nearest(x, c, labels, valid.to(at::kLong)); },
       [&] { check(x, c, labels, valid.to(at::kLong)); },
       "valid must be a bool tensor of shape (P, k) = (2, 3), got Long of shape [2, 3]"},
      {"valid shape", [&] { nearest(x, c, labels, valid.narrow(1, 0, 2)); },
       [&] { check(x, c, labels, valid.narrow(1, 0, 2)); }, "valid must be a bool tensor of shape (P, k) = (2, 3)"},
  });
  EXPECT_NO_ERROR(nearest(x, c, labels, valid));
  EXPECT_NO_ERROR(nearest(x, c, labels, std::nullopt));
}

TEST(NearestOtherArgs, BackwardSameErrorThroughTheOpAndTheCheck) {
  const at::Tensor x = points(), c = at::randn({2, 3, 3}, at::kDouble), labels = good_labels();
  const at::Tensor grad = at::ones({2, 10}, at::kDouble);
  auto check = [&](const at::Tensor& g, const at::Tensor& l) {
    return dse::check_nearest_backward_args(g, x, c, l, std::nullopt, kCpu);
  };
  expect_same_errors({
      {"grad shape", [&] { nearest_backward(grad.t(), x, c, labels, std::nullopt); }, [&] { check(grad.t(), labels); },
       "dse::nearest_other_centroid_distance_backward: grad must have shape (P, M) = [2, 10], got [10, 2]"},
      {"grad dtype", [&] { nearest_backward(grad.to(at::kLong), x, c, labels, std::nullopt); },
       [&] { check(grad.to(at::kLong), labels); }, "grad must be a floating tensor, got Long"},
      {"labels range", [&] { nearest_backward(grad, x, c, labels + 1, std::nullopt); },
       [&] { check(grad, labels + 1); }, "dse::nearest_other_centroid_distance_backward: labels must lie in [-1, 3)"},
  });
  // Any floating grad is used in x's dtype.
  const auto [gx, gc] = nearest_backward(grad.to(at::kFloat), x, c, labels, std::nullopt);
  EXPECT_EQ(gx.scalar_type(), at::kDouble);
  EXPECT_EQ(gc.sizes(), c.sizes());
}

// ---------------------------------------------------------------- device rules, as a CUDA kernel sees them
// Every tensor argument other than kmeans' counts must be on x's device; x must be on
// the kernel's device. Here x is "on cuda:0" and the other arguments on the CPU.
TEST(DeviceRules, CudaKernelRefusesCpuX) {
  for (const char* op : {"kmeans", "cluster_css", "effective_rank", "nearest_other_centroid_distance"})
    EXPECT_ERROR(dse::check_kernel_device(points(), kCuda, op),
                 std::string("dse::") + op + ": this is the CUDA kernel but x is on cpu");
  EXPECT_ERROR(dse::check_cluster_css_args(points(), good_labels(), 3, std::nullopt, kCuda), "this is the CUDA kernel");
  EXPECT_ERROR(dse::check_effective_rank_args(points(), std::nullopt, kCuda), "this is the CUDA kernel");
  EXPECT_ERROR(dse::check_nearest_args(points(), at::randn({2, 3, 3}, at::kDouble), good_labels(), std::nullopt, kCuda),
               "this is the CUDA kernel");
  EXPECT_NO_ERROR(dse::check_kernel_device(points(), kCpu, "kmeans"));
}

TEST(DeviceRules, KeptBasisOnAnotherDeviceIsRefused) {
  // A CPU basis handed to a CUDA backward: refused, never moved (nor converted).
  const at::Tensor eig = at::zeros({2, 3, 3}, at::kDouble), vec = at::zeros({2, 3, 3, 3}, at::kDouble);
  EXPECT_ERROR(dse::check_cluster_css_basis(eig, vec, 2, 3, 3, gpu, "cluster_css_backward"),
               "dse::cluster_css_backward: eigenvalues is on cpu but x is on cuda:0; pass eigenvalues on x's device");
  EXPECT_ERROR(dse::check_effective_rank_basis(eig[0], vec[0], 3, 3, gpu, "effective_rank_backward"),
               "dse::effective_rank_backward: eigenvalues is on cpu but x is on cuda:0");
  // The dtype rule is the same on both devices: float64 only.
  EXPECT_ERROR(dse::check_cluster_css_basis(eig.to(at::kFloat), vec, 2, 3, 3, gpu, "cluster_css_backward"),
               "eigenvalues must be float64");
  EXPECT_ERROR(dse::check_effective_rank_basis(eig[0], vec[0].to(at::kFloat), 3, 3, gpu, "effective_rank_backward"),
               "eigenvectors must be float64");
  // On x's device it is accepted; absent or empty means "recompute".
  const c10::Device cpu(c10::kCPU);
  EXPECT_TRUE(dse::check_cluster_css_basis(eig, vec, 2, 3, 3, cpu, "cluster_css_backward").present());
  EXPECT_FALSE(
      dse::check_cluster_css_basis(std::nullopt, std::nullopt, 2, 3, 3, gpu, "cluster_css_backward").present());
  const at::Tensor none = at::empty({0}, at::kDouble);
  EXPECT_FALSE(dse::check_effective_rank_basis(none, none, 3, 3, gpu, "effective_rank_backward").present());
  // M == 1: S = 0, the kept bases are empty on every device.
  EXPECT_FALSE(dse::check_cluster_css_basis(at::zeros({2, 3, 0}, at::kDouble), at::zeros({2, 3, 0, 0}, at::kDouble),
                                            2, 3, 0, gpu, "cluster_css_backward")
                   .present());
}

TEST(DeviceRules, OtherTensorArgumentsMustBeOnXsDevice) {
  const char* op = "some_op";
  dse::PendingChecks pending;
  EXPECT_ERROR(dse::check_labels(good_labels(), 2, 10, gpu, op),
               "dse::some_op: labels is on cpu but x is on cuda:0; pass labels on x's device");
  EXPECT_ERROR(dse::check_rank_index(at::zeros({2, 3}, at::kLong), 5, gpu, op, kCuda, pending), "index is on cpu but x is on cuda:0");
  EXPECT_ERROR(dse::check_valid_centroids(at::ones({2, 3}, at::kBool), 2, 3, gpu, op),
               "valid is on cpu but x is on cuda:0");
  EXPECT_ERROR(dse::check_grad(at::ones({2, 3}), {2, 3}, "(P, k)", gpu, at::kDouble, op),
               "grad is on cpu but x is on cuda:0");
  EXPECT_ERROR(dse::check_on_device(at::ones({2, 3, 3}), "centroids", gpu, op),
               "centroids is on cpu but x is on cuda:0");
  // Shapes and dtypes are checked before devices, with the same messages as on the CPU.
  EXPECT_ERROR(dse::check_labels(good_labels().to(at::kInt), 2, 10, gpu, op), "labels must be int64, got Int");
  EXPECT_ERROR(dse::check_rank_index(at::zeros({6}, at::kLong), 5, gpu, op, kCuda, pending), "index must be a non-empty 2-D int64");
  // On x's device each is accepted.
  const c10::Device cpu(c10::kCPU);
  EXPECT_NO_ERROR(dse::check_labels(good_labels(), 2, 10, cpu, op));
  EXPECT_NO_ERROR(dse::check_rank_index(at::zeros({2, 3}, at::kLong), 5, cpu, op, kCpu, pending));
  EXPECT_NO_ERROR(dse::check_valid_centroids(at::ones({2, 3}, at::kBool), 2, 3, cpu, op));
  EXPECT_EQ(dse::check_grad(at::ones({2, 3}, at::kFloat), {2, 3}, "(P, k)", cpu, at::kDouble, op).scalar_type(),
            at::kDouble);
}

// ---------------------------------------------------------------- value checks
// On CUDA a value check must not read the device: the args headers hand the kernel a
// predicate (common/checks.h) that it asserts on the device. Here the CUDA-side rules run
// on CPU tensors: the predicate is computed, nothing is raised, and it says the truth.
TEST(ValueChecks, CudaKernelsGetPredicatesInsteadOfHostReads) {
  const at::Tensor labels = good_labels();
  auto label_check = [](const at::Tensor& l) {
    dse::PendingChecks pending;
    dse::check_label_range(l, 3, "op", kCuda, pending);
    EXPECT_EQ(pending.size(), 1u);
    EXPECT_EQ(pending[0].what, dse::ValueCheck::kLabelRange);
    return pending[0].ok.item<bool>();
  };
  EXPECT_TRUE(label_check(labels));
  EXPECT_TRUE(label_check(labels - 1));  // -1 = ignored point
  EXPECT_FALSE(label_check(labels + 1));
  EXPECT_FALSE(label_check(labels - 2));
  dse::PendingChecks pending;
  EXPECT_NO_ERROR(dse::check_rank_index(at::full({2, 3}, 7, at::kLong), 5, c10::Device(c10::kCPU), "op", kCuda, pending));
  ASSERT_EQ(pending.size(), 1u);
  EXPECT_EQ(pending[0].what, dse::ValueCheck::kRankIndexRange);
  EXPECT_FALSE(pending[0].ok.item<bool>());
  // The CPU kernel raises at once and leaves nothing pending.
  dse::PendingChecks none;
  EXPECT_ERROR(dse::check_label_range(labels + 1, 3, "op", kCpu, none), "labels must lie in [-1, 3), got [1, 3]");
  EXPECT_TRUE(none.empty());
}

TEST(ValueChecks, CssSizesMustBeTheMemberCounts) {
  const at::Tensor x = points(), labels = good_labels();
  const at::Tensor sizes = dse::member_counts(labels, 3);
  // member_counts: label -1 counts nowhere.
  const at::Tensor some_ignored = labels.masked_fill(labels == 0, -1);
  EXPECT_EQ(dse::member_counts(some_ignored, 3).select(1, 0).sum().item<int64_t>(), 0);
  EXPECT_EQ(sizes.sum().item<int64_t>(), labels.numel());
  EXPECT_NO_ERROR(dse::check_cluster_css_args(x, labels, 3, sizes, kCpu));
  EXPECT_ERROR(dse::check_cluster_css_args(x, labels, 3, sizes + 1, kCpu),
               "sizes must be the member counts of labels, but sizes[0, 0]");
  EXPECT_ERROR(dse::check_cluster_css_args(x, labels, 3, sizes.narrow(1, 0, 2), kCpu),
               "sizes must be an int64 tensor of shape (P, k) = (2, 3)");
  EXPECT_ERROR(dse::check_cluster_css_args(x, labels, 3, sizes.to(at::kMeta), kCpu), "sizes must be on the CPU");
  // As a CUDA kernel sees them: two predicates (labels, sizes), true only for the right sizes.
  for (const bool right : {true, false}) {
    dse::PendingChecks pending;
    const at::Tensor given = right ? sizes : sizes.flip(1).contiguous();
    EXPECT_NO_ERROR(dse::check_css_sizes(given, labels, 2, 3, kCuda, pending, "cluster_css"));
    ASSERT_EQ(pending.size(), 1u);
    EXPECT_EQ(pending[0].what, dse::ValueCheck::kCssSizes);
    EXPECT_EQ(pending[0].ok.item<bool>(), right);
  }
}
