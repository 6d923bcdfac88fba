// The matrices of the effective-rank ops on the CPU: either the (m, d) slices of a
// (P, m, d) tensor (read in place through its strides), or rows of a (R, d) table
// picked by a (P, m) index. Used by the forward and the backward kernel.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "common/effective_rank_args.h"

namespace dse::cpu {

struct RankRows {
  int64_t P = 0, m = 0, d = 0;
  int64_t s0 = 0, s1 = 0, s2 = 0;  // without index: entry (p, r, t) at p * s0 + r * s1 + t * s2
  const int64_t* ip = nullptr;     // (P, m) row ids, or null

  // Describes the matrices of checked arguments (common/effective_rank_args.h).
  explicit RankRows(const EffectiveRankArgs& in) : P(in.P), m(in.m), d(in.d) {
    if (in.index.defined()) {
      s0 = 0, s1 = in.x.stride(0), s2 = in.x.stride(1);
      ip = in.index.const_data_ptr<int64_t>();
    } else {
      s0 = in.x.stride(0), s1 = in.x.stride(1), s2 = in.x.stride(2);  // strided views are read in place
    }
  }

  // Writes entry (r, t) of matrix p to dst[(r * d + t) * stride], in float64. Rows are split
  // over threads outside a parallel region (one large matrix); inside one, this runs inline.
  template <typename scalar_t>
  void fill(const scalar_t* xp, int64_t p, double* dst, int64_t stride) const {
    at::parallel_for(0, m, kRowGrain, [&](int64_t r0, int64_t r1) { fill_rows(xp, p, r0, r1, dst + r0 * d * stride, stride); });
  }

  // Rows [r0, r1) of matrix p: entry (r, t) to dst[((r - r0) * d + t) * stride], on this thread.
  template <typename scalar_t>
  void fill_rows(const scalar_t* xp, int64_t p, int64_t r0, int64_t r1, double* dst, int64_t stride = 1) const {
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* src = xp + (ip ? ip[p * m + r] * s1 : p * s0 + r * s1);
      double* row = dst + (r - r0) * d * stride;
      for (int64_t t = 0; t < d; ++t) row[t * stride] = static_cast<double>(src[t * s2]);
    }
  }
  static constexpr int64_t kRowGrain = 512;
};

}  // namespace dse::cpu
