// The interleaved (kLanes matrices at a time) Gram product and eigensolver,
// checked against ATen / LAPACK for every implementation this CPU can run.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "cpu/interleaved.h"
#include "cpu/kernels.h"

namespace {

using dse::cpu::kLanes;

// kLanes (n, cols) float64 matrices -> interleaved buffer; missing lanes are zero.
std::vector<double> pack(const std::vector<at::Tensor>& mats, int64_t n, int64_t cols) {
  std::vector<double> out(n * cols * kLanes, 0.0);
  for (size_t q = 0; q < mats.size(); ++q) {
    const at::Tensor m = mats[q].contiguous();
    const double* p = m.const_data_ptr<double>();
    for (int64_t i = 0; i < n * cols; ++i) out[i * kLanes + q] = p[i];
  }
  return out;
}

at::Tensor random_symmetric(int64_t n) {
  const at::Tensor a = at::randn({n, n}, at::kDouble);
  return (a + a.t()) / 2;
}

at::Tensor gram_of(int64_t n, int64_t rank, int64_t d = 40) {
  const at::Tensor z = at::matmul(at::randn({n, rank}, at::kDouble), at::randn({rank, d}, at::kDouble));
  return at::matmul(z, z.t());
}

// Tridiagonal (1, 2, 1) / Wilkinson-like matrix with clustered eigenvalues.
at::Tensor wilkinson(int64_t n) {
  at::Tensor a = at::zeros({n, n}, at::kDouble);
  for (int64_t i = 0; i < n; ++i) {
    a[i][i] = std::abs(static_cast<double>(i) - (n - 1) / 2.0);
    if (i + 1 < n) a[i][i + 1] = a[i + 1][i] = 1.0;
  }
  return a;
}

class Interleaved : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    previous_ = dse::cpu::interleaved_isa();
    if (!dse::cpu::select_interleaved_isa(GetParam())) GTEST_SKIP() << GetParam() << " is not available here";
  }
  void TearDown() override { dse::cpu::select_interleaved_isa(previous_); }
  std::string previous_;
};

TEST_P(Interleaved, GramIsTheLowerTriangleOfZZt) {
  at::manual_seed(11);
  const int64_t n = 9, d = 13;  // n a multiple of kGramBlock
  std::vector<at::Tensor> z;
  for (int64_t q = 0; q < kLanes; ++q) z.push_back(at::randn({n, d}, at::kDouble));
  const std::vector<double> packed = pack(z, n, d);
  std::vector<double> g(n * n * kLanes, -1.0);
  dse::cpu::interleaved_gram(packed.data(), n, d, g.data());
  for (int64_t q = 0; q < kLanes; ++q) {
    const at::Tensor expect = at::matmul(z[q], z[q].t());
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j <= i; ++j)
        EXPECT_NEAR(g[(i * n + j) * kLanes + q], expect[i][j].item<double>(), 1e-12) << "lane " << q;
  }
}

TEST_P(Interleaved, EigenvaluesMatchLapack) {
  at::manual_seed(12);
  for (int64_t n : {1, 2, 3, 5, 16, 64, 67}) {
    // Each group of lanes mixes kinds of matrices; every kind meets every lane.
    std::vector<at::Tensor> kinds = {
        random_symmetric(n),                                  // indefinite
        gram_of(n, n),                                        // PSD, full rank when n <= d
        gram_of(n, std::max<int64_t>(1, n / 3)),              // rank deficient
        at::zeros({n, n}, at::kDouble),                       // all zero
        3.0 * at::eye(n, at::kDouble),                        // one repeated eigenvalue
        at::diag(at::arange(1, n + 1, at::kDouble)),          // already diagonal
        wilkinson(n),                                         // tridiagonal, clustered pairs
        1e-150 * gram_of(n, n),                               // tiny entries
        1e150 * random_symmetric(n),                          // huge entries
    };
    for (size_t first = 0; first < kinds.size(); first += 1) {
      std::vector<at::Tensor> mats;
      for (int64_t q = 0; q < kLanes; ++q) mats.push_back(kinds[(first + q) % kinds.size()]);
      std::vector<double> a = pack(mats, n, n), eig(n * kLanes), work(dse::cpu::interleaved_eigen_workspace(n));
      ASSERT_EQ(dse::cpu::interleaved_eigenvalues(a.data(), n, eig.data(), work.data()), 0) << "n = " << n;
      for (int64_t q = 0; q < kLanes; ++q) {
        const at::Tensor expect = at::linalg_eigvalsh(mats[q]);
        const double scale = std::max(expect.abs().max().item<double>(), 1e-300);
        for (int64_t i = 0; i < n; ++i)
          EXPECT_NEAR(eig[i * kLanes + q] / scale, expect[i].item<double>() / scale, 1e-12)
              << "n = " << n << ", kind " << (first + q) % kinds.size() << ", eigenvalue " << i;
      }
    }
  }
}

TEST_P(Interleaved, ZeroRowsOnlyAddZeroEigenvalues) {
  // gram_spectra pads a group to its largest member with zero rows.
  at::manual_seed(13);
  const int64_t n = 12, r = 7;
  at::Tensor g = at::zeros({n, n}, at::kDouble);
  g.narrow(0, 0, r).narrow(1, 0, r).copy_(gram_of(r, r));
  std::vector<double> a = pack({g}, n, n), eig(n * kLanes), work(dse::cpu::interleaved_eigen_workspace(n));
  ASSERT_EQ(dse::cpu::interleaved_eigenvalues(a.data(), n, eig.data(), work.data()), 0);
  const at::Tensor expect = at::linalg_eigvalsh(g.narrow(0, 0, r).narrow(1, 0, r));
  for (int64_t j = 0; j < r; ++j)
    EXPECT_NEAR(eig[(n - r + j) * kLanes], expect[j].item<double>(), 1e-12 * expect.max().item<double>());
}

TEST_P(Interleaved, EigenvectorsMatchLapack) {
  at::manual_seed(15);
  for (int64_t n : {1, 2, 3, 5, 16, 64, 67}) {
    std::vector<at::Tensor> kinds = {
        random_symmetric(n),
        gram_of(n, n),
        gram_of(n, std::max<int64_t>(1, n / 3)),              // rank deficient: a repeated zero eigenvalue
        at::zeros({n, n}, at::kDouble),
        3.0 * at::eye(n, at::kDouble),
        wilkinson(n),
        1e-150 * gram_of(n, n),
        1e150 * random_symmetric(n),
    };
    for (size_t first = 0; first < kinds.size(); ++first) {
      std::vector<at::Tensor> mats;
      for (int64_t q = 0; q < kLanes; ++q) mats.push_back(kinds[(first + q) % kinds.size()]);
      const int64_t ldv = n + 2;  // a leading dimension wider than the matrix
      std::vector<double> a = pack(mats, n, n), work(dse::cpu::interleaved_vectors_workspace(n));
      std::vector<std::vector<double>> eig(kLanes, std::vector<double>(n)), vec(kLanes, std::vector<double>(n * ldv));
      double* eig_ptrs[kLanes];
      double* vec_ptrs[kLanes];
      for (int64_t q = 0; q < kLanes; ++q) eig_ptrs[q] = eig[q].data(), vec_ptrs[q] = vec[q].data();
      ASSERT_EQ(dse::cpu::interleaved_eigenvectors(a.data(), n, eig_ptrs, vec_ptrs, ldv, work.data()), 0);
      for (int64_t q = 0; q < kLanes; ++q) {
        const at::Tensor expect = at::linalg_eigvalsh(mats[q]);
        const double scale = std::max(expect.abs().max().item<double>(), 1e-300);
        const at::Tensor values = at::tensor(eig[q], at::kDouble);
        const at::Tensor v = at::from_blob(vec[q].data(), {n, n}, {ldv, 1}, at::kDouble).clone();  // rows
        const std::string where = "n = " + std::to_string(n) + ", kind " + std::to_string((first + q) % kinds.size());
        EXPECT_TRUE(at::allclose(values / scale, expect / scale, 0, 1e-12)) << where;
        // Orthonormal rows, and A v_i = lambda_i v_i to the rounding of A.
        EXPECT_TRUE(at::allclose(at::mm(v, v.t()), at::eye(n, at::kDouble), 0, 1e-12)) << where;
        const at::Tensor residual = at::mm(v, mats[q]) - values.unsqueeze(1) * v;
        EXPECT_LT(residual.abs().max().item<double>() / scale, 1e-12) << where;
      }
    }
  }
}

TEST_P(Interleaved, EigenvectorsOfZeroPaddedGramsLieInTheMatrix) {
  // The css backward pads a group to its largest member with zero rows: the r largest
  // eigenpairs are those of the r x r Gram, their vectors zero on the padding.
  at::manual_seed(16);
  const int64_t n = 12, r = 7;
  at::Tensor g = at::zeros({n, n}, at::kDouble);
  const at::Tensor small = gram_of(r, r);
  g.narrow(0, 0, r).narrow(1, 0, r).copy_(small);
  std::vector<double> a = pack({g}, n, n), work(dse::cpu::interleaved_vectors_workspace(n)), eig(n), vec(n * n);
  double* eig_ptrs[kLanes] = {eig.data()};
  double* vec_ptrs[kLanes] = {vec.data()};
  ASSERT_EQ(dse::cpu::interleaved_eigenvectors(a.data(), n, eig_ptrs, vec_ptrs, n, work.data()), 0);
  const at::Tensor v = at::from_blob(vec.data(), {n, n}, at::kDouble).narrow(0, n - r, r);
  EXPECT_LT(v.narrow(1, r, n - r).abs().max().item<double>(), 1e-12);
  const at::Tensor top = at::tensor(std::vector<double>(eig.begin() + (n - r), eig.end()), at::kDouble);
  EXPECT_TRUE(at::allclose(top, at::linalg_eigvalsh(small), 0, 1e-12 * small.abs().max().item<double>()));
}

INSTANTIATE_TEST_SUITE_P(Isa, Interleaved, ::testing::Values("portable", "avx2"));

TEST(InterleavedFallback, UnconvergedLanesAreReportedAndSolvedByLapack) {
  at::manual_seed(14);
  const int64_t n = 10;
  std::vector<at::Tensor> mats;
  for (int64_t q = 0; q < kLanes; ++q) mats.push_back(random_symmetric(n));
  std::vector<double> a = pack(mats, n, n), eig(n * kLanes), work(dse::cpu::interleaved_eigen_workspace(n));
  const int old = dse::cpu::set_interleaved_max_sweeps(0);
  EXPECT_EQ(dse::cpu::interleaved_eigenvalues(a.data(), n, eig.data(), work.data()), (1 << kLanes) - 1);
  std::vector<double> b = pack(mats, n, n), vwork(dse::cpu::interleaved_vectors_workspace(n)), e(n), v(n * n);
  double* eig_ptrs[kLanes] = {e.data()};
  double* vec_ptrs[kLanes] = {v.data()};
  EXPECT_EQ(dse::cpu::interleaved_eigenvectors(b.data(), n, eig_ptrs, vec_ptrs, n, vwork.data()), (1 << kLanes) - 1);

  // The kernels then solve the failed matrices with LAPACK: same results.
  const at::Tensor x = at::randn({9, 20, 30}, at::kDouble);
  const at::Tensor labels = at::randint(0, 3, {9, 20}, at::kLong);
  const at::Tensor rank_fallback = std::get<0>(dse::cpu::effective_rank(x));
  const at::Tensor css_fallback = std::get<0>(dse::cpu::cluster_css(x, labels, 3));
  const at::Tensor grad = at::linspace(-1.0, 2.0, 27, at::kDouble).view({9, 3});
  const at::Tensor css_grad_fallback = dse::cpu::cluster_css_backward(grad, x, labels, 3);  // wide clusters
  dse::cpu::set_interleaved_max_sweeps(old);
  EXPECT_TRUE(at::allclose(css_grad_fallback, dse::cpu::cluster_css_backward(grad, x, labels, 3), 1e-10, 1e-12));
  EXPECT_TRUE(at::allclose(rank_fallback, std::get<0>(dse::cpu::effective_rank(x)), 1e-12, 0));
  EXPECT_TRUE(at::allclose(css_fallback, std::get<0>(dse::cpu::cluster_css(x, labels, 3)), 1e-12, 0));
}

}  // namespace
