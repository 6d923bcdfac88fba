// The matrices of the effective-rank ops: either the (m, d) slices of a (P, m, d)
// tensor (read in place through its strides), or rows of a (R, d) table picked
// by a (P, m) index. Shared by the forward and backward kernels.
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "common/checks.h"

namespace dse::cpu {

struct RankRows {
  int64_t P = 0, m = 0, d = 0;
  int64_t s0 = 0, s1 = 0, s2 = 0;  // without index: entry (p, r, t) at p * s0 + r * s1 + t * s2
  at::Tensor index;                // (P, m) int64 row ids, or undefined
  const int64_t* ip = nullptr;

  // Checks the arguments of op and describes its matrices.
  RankRows(const at::Tensor& x, const std::optional<at::Tensor>& index_in, const char* op) {
    check_cpu(x, op);
    if (index_in.has_value()) {
      index = index_in->contiguous();
      TORCH_CHECK(x.dim() == 2, "dse::", op, ": with index, x must be a 2-D (rows, dim) table, got shape ", x.sizes());
      TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "dse::", op,
                  ": x must be float32 or float64, got ", x.scalar_type());
      TORCH_CHECK(x.numel() > 0, "dse::", op, ": x must not be empty, got shape ", x.sizes());
      TORCH_CHECK(index.dim() == 2 && index.numel() > 0 && index.scalar_type() == at::kLong, "dse::", op,
                  ": index must be a non-empty 2-D int64 tensor (matrices, rows), got ", index.scalar_type(), " ",
                  index.sizes());
      check_cpu(index, op);
      const int64_t lo = index.min().item<int64_t>(), hi = index.max().item<int64_t>();
      TORCH_CHECK(lo >= 0 && hi < x.size(0), "dse::", op, ": index must lie in [0, ", x.size(0), "), got [", lo,
                  ", ", hi, "]");
      P = index.size(0), m = index.size(1), d = x.size(1);
      s0 = 0, s1 = x.stride(0), s2 = x.stride(1);
      ip = index.const_data_ptr<int64_t>();
    } else {
      check_points(x, op);
      P = x.size(0), m = x.size(1), d = x.size(2);
      s0 = x.stride(0), s1 = x.stride(1), s2 = x.stride(2);  // strided views are read in place
    }
  }

  // Writes entry (r, t) of matrix p to dst[(r * d + t) * stride], in float64.
  template <typename scalar_t>
  void fill(const scalar_t* xp, int64_t p, double* dst, int64_t stride) const {
    for (int64_t r = 0; r < m; ++r) {
      const scalar_t* src = xp + (ip ? ip[p * m + r] * s1 : p * s0 + r * s1);
      for (int64_t t = 0; t < d; ++t) dst[(r * d + t) * stride] = static_cast<double>(src[t * s2]);
    }
  }
};

}  // namespace dse::cpu
