// Rows of the clusters of a labelled point set, shared by the css forward and
// backward kernels: grouping points by label, and the Householder-centred
// (n - 1, d) matrix of a cluster (common/spectrum.h) with its adjoint.
#pragma once
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "common/spectrum.h"

namespace dse::cpu {

// Groups the points of each problem by label: order[p * M ...] lists point
// indices cluster by cluster; offsets[p * (k + 1) + j] .. [+ j + 1] delimit cluster j.
inline void group_by_label(const int64_t* labels, int64_t P, int64_t M, int64_t k, std::vector<int64_t>& order,
                    std::vector<int64_t>& offsets) {
  order.assign(P * M, 0);
  offsets.assign(P * (k + 1), 0);
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t* lab = labels + p * M;
      int64_t* off = offsets.data() + p * (k + 1);
      for (int64_t i = 0; i < M; ++i)
        if (lab[i] >= 0) off[lab[i] + 1] += 1;
      for (int64_t j = 0; j < k; ++j) off[j + 1] += off[j];
      std::vector<int64_t> cursor(off, off + k);
      for (int64_t i = 0; i < M; ++i)
        if (lab[i] >= 0) order[p * M + cursor[lab[i]]++] = i;
    }
  });
}

// Asks for the cache lines of a row of d entries to be loaded ahead of their use: a cluster's
// member rows are scattered over the points, so the hardware prefetcher cannot see the next one
// coming, and each row would otherwise start with a few cache misses in a row. for_write:
// the row is about to be written rather than read.
template <typename scalar_t>
inline void prefetch_row(const scalar_t* row, int64_t d, bool for_write = false) {
#if defined(__GNUC__)
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < d * static_cast<int64_t>(sizeof(scalar_t)); b += 64)
    if (for_write)
      __builtin_prefetch(bytes + b, 1);
    else
      __builtin_prefetch(bytes + b);
#else
  (void)row;
  (void)d;
  (void)for_write;
#endif
}

// Writes the Householder-centred (n - 1, d) matrix of the n member rows (common/spectrum.h).
// Returns the Gram eigenvalue floor of its centring noise (centring_noise_floor).
template <typename scalar_t>
double fill_centred(const scalar_t* x, const int64_t* members, int64_t n, int64_t d, double* dst, int64_t stride) {
  std::vector<double> colsum(d, 0.0);
  double max_sq = 0.0;
  constexpr int64_t kPartial = 8;  // partial sums of the squared norm: no serial chain of d additions
  for (int64_t r = 0; r < n; ++r) {
    const scalar_t* row = x + members[r] * d;
    if (r + 1 < n) prefetch_row(x + members[r + 1] * d, d);
    double part[kPartial] = {};
    int64_t t = 0;
    for (; t + kPartial <= d; t += kPartial)
      for (int64_t j = 0; j < kPartial; ++j) {
        const double v = static_cast<double>(row[t + j]);
        colsum[t + j] += v;
        part[j] += v * v;
      }
    for (; t < d; ++t) {
      const double v = static_cast<double>(row[t]);
      colsum[t] += v;
      part[0] += v * v;
    }
    double sq = 0.0;
    for (int64_t j = 0; j < kPartial; ++j) sq += part[j];
    max_sq = sq > max_sq ? sq : max_sq;
  }
  const scalar_t* last = x + members[n - 1] * d;
  const HouseholderCentering h = householder_centering(n);
  for (int64_t r = 0; r < n - 1; ++r) {
    const scalar_t* row = x + members[r] * d;
    for (int64_t t = 0; t < d; ++t)
      dst[(r * d + t) * stride] = householder_centered(static_cast<double>(row[t]), colsum[t], static_cast<double>(last[t]), h);
  }
  return centring_noise_floor(n, std::sqrt(max_sq));
}

// Adjoint of fill_centred: given dL/dZ for the (n - 1, d) centred matrix (y, row-major),
// writes dL/dx for the n member rows to grad (row members[r] of a (M, d) array), scaled by s.
template <typename scalar_t>
void scatter_centred_gradient(const double* y, const int64_t* members, int64_t n, int64_t d, double s,
                              scalar_t* grad) {
  const HouseholderCentering h = householder_centering(n);
  const double c = h.a * h.beta;  // = a^2 / (1 - a)
  std::vector<double> total(d, 0.0);
  for (int64_t r = 0; r + 1 < n; ++r)
    for (int64_t t = 0; t < d; ++t) total[t] += y[r * d + t];
  for (int64_t r = 0; r + 1 < n; ++r) {
    scalar_t* out = grad + members[r] * d;
    prefetch_row(grad + members[r + 1] * d, d, /*for_write=*/true);
    for (int64_t t = 0; t < d; ++t) out[t] = static_cast<scalar_t>(s * (y[r * d + t] - c * total[t]));
  }
  scalar_t* last = grad + members[n - 1] * d;
  for (int64_t t = 0; t < d; ++t) last[t] = static_cast<scalar_t>(s * h.a * total[t]);
}

}  // namespace dse::cpu
