// Host/device helpers (csrc/common/*.h), tested on the CPU: the CUDA kernels
// include the same headers.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "common/eigen_solver_choice.h"
#include "common/rng.h"
#include "common/spectrum.h"
#include "cpu/cluster_rows.h"
#include "cpu/kernels.h"

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
