// Per-matrix spectral routines shared by the CPU and CUDA kernels.
//
// Singular values are obtained as square roots of the eigenvalues of a Gram
// matrix (the smaller of A A^T and A^T A). These helpers turn such eigenvalues
// into the two quantities DSE needs: a nuclear norm and a normalized
// effective rank.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace dse {

// Eigenvalues of a Gram matrix below `m * eps * lambda_max` are rounding noise
// (a PSD matrix has none below 0); treat them as exact zeros so that rank
// deficient inputs give the same value as an SVD would. `min_floor` raises the
// floor to a known absolute noise level (e.g. that of centring, see
// centring_noise_floor), for matrices that are nothing but noise.
DSE_HOST_DEVICE double gram_noise_floor(const double* eig, int64_t m, double min_floor = 0.0) {
  double lmax = 0.0;
  for (int64_t i = 0; i < m; ++i) lmax = eig[i] > lmax ? eig[i] : lmax;
  const double floor = static_cast<double>(m) * 2.220446049250313e-16 * lmax;
  return floor > min_floor ? floor : min_floor;
}

// Gram eigenvalue floor of a centred cluster of n points whose largest row norm
// is max_norm: centring leaves errors of a few eps * max_norm per row, so the
// centred matrix of n identical points has singular values up to about
// sqrt(n) * eps * max_norm instead of 0.
DSE_HOST_DEVICE double centring_noise_floor(int64_t n, double max_norm) {
  const double noise = 4.0 * sqrt(static_cast<double>(n)) * 2.220446049250313e-16 * max_norm;
  return noise * noise;
}

// Singular value from a Gram eigenvalue, with the noise floor applied.
DSE_HOST_DEVICE double singular_from_eig(double lambda, double floor) {
  return lambda > floor ? sqrt(lambda) : 0.0;
}

// Sum of singular values (nuclear norm) from Gram eigenvalues.
DSE_HOST_DEVICE double nuclear_norm_from_eigs(const double* eig, int64_t m, double min_floor = 0.0) {
  const double floor = gram_noise_floor(eig, m, min_floor);
  double s = 0.0;
  for (int64_t i = 0; i < m; ++i) s += singular_from_eig(eig[i], floor);
  return s;
}

// exp(entropy of sigma / sum sigma) / denom, from Gram eigenvalues.
// An all-zero matrix has no spectrum: its effective rank is defined as 0.
DSE_HOST_DEVICE double effective_rank_from_eigs(const double* eig, int64_t m, int64_t denom) {
  const double floor = gram_noise_floor(eig, m);
  double total = 0.0;
  for (int64_t i = 0; i < m; ++i) total += singular_from_eig(eig[i], floor);
  if (!(total > 0.0)) return 0.0;
  double h = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    const double p = singular_from_eig(eig[i], floor) / total;
    if (p > 0.0) h -= p * log(p);
  }
  return exp(h) / static_cast<double>(denom);
}

// Centring by a Householder reflection.
//
// For n points x_1..x_n (rows), let a = 1/sqrt(n) and H the reflection that maps
// a*1 to e_n. Then H (X - mean) has a zero last row and its first n-1 rows are
//   z_i = x_i - beta * (a * S - x_n),   beta = a / (1 - a),  S = sum_j x_j.
// The (n-1) x d matrix Z has the same singular values as the centred matrix but
// no structural zero one, so a Gram eigensolver does not turn that zero into
// sqrt(rounding noise).
struct HouseholderCentering {
  double a;
  double beta;
};

DSE_HOST_DEVICE HouseholderCentering householder_centering(int64_t n) {
  const double a = 1.0 / sqrt(static_cast<double>(n));
  return {a, a / (1.0 - a)};
}

// One entry of Z: x_ic is x_i[c], colsum_c is S[c], xlast_c is x_n[c].
DSE_HOST_DEVICE double householder_centered(double x_ic, double colsum_c, double xlast_c,
                                            HouseholderCentering h) {
  return x_ic - h.beta * (h.a * colsum_c - xlast_c);
}

// sqrt(max(n - 1, d)): the normaliser of the css of a cluster of n points in d
// dimensions, css(C) = (sum of singular values of C - mean row) / sqrt(max(n - 1, d))
// (README.md, "The metric").
DSE_HOST_DEVICE double css_denominator(int64_t n, int64_t d) {
  const int64_t m = (n - 1) > d ? (n - 1) : d;
  return sqrt(static_cast<double>(m));
}

}  // namespace dse
