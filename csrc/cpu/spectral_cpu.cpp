// Spectral reductions on the CPU: per-cluster centred singular-value sums and
// normalized effective ranks.
//
// Singular values come from the eigenvalues of the smaller Gram matrix, in
// float64. Matrices of similar size are padded with zero rows into buckets so
// each bucket is one batched GEMM and one batched symmetric eigensolve; zero
// rows only add zero eigenvalues, which the reductions ignore.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <functional>
#include <atomic>
#include <vector>

#include "common/checks.h"
#include "common/spectrum.h"
#include "cpu/kernels.h"
#include "cpu/cluster_rows.h"
#include "cpu/interleaved.h"
#include "cpu/lapack.h"
#include "cpu/rank_rows.h"

namespace dse::cpu {

at::Tensor gram_eigenvalues(const at::Tensor& a) {
  TORCH_CHECK(a.dim() == 2 && a.scalar_type() == at::kDouble, "gram_eigenvalues expects a float64 matrix");
  at::Tensor g = (a.size(0) <= a.size(1) ? at::mm(a, a.t()) : at::mm(a.t(), a)).contiguous();
  at::Tensor eig = at::empty({g.size(0)}, g.options());
  SymmetricEigen().values(g.data_ptr<double>(), g.size(0), std::max<int64_t>(1, g.size(0)), eig.data_ptr<double>());
  return eig;
}

namespace {

constexpr size_t kRetainedBytes = 4 << 20;  // per-thread scratch kept between calls, at most

using Fill = std::function<void(int64_t, double*, int64_t)>;
using Reduce = std::function<void(int64_t, const double*, int64_t)>;

// Eigenvalues of the Gram matrices of many (rows_i, d) float64 matrices.
// fill(i, dst, stride) writes entry (r, t) of matrix i (r < rows_i) to dst[(r * d + t) * stride];
// reduce(i, eig, m) receives the m = min(rows_i, d) eigenvalues of its Gram matrix, ascending.
// Matrices with rows_i < 1 are skipped.
//
// Matrices no taller than wide (rows_i <= d), sorted by size, go kLanes at a time through
// the interleaved Gram product and eigensolver (cpu/interleaved.h), which beat BLAS +
// LAPACK one matrix at a time at every size measured (up to 384 x 384 Grams). Taller
// ones (Gram Z^T Z of side d), or a lone matrix, go through BLAS and LAPACK.
// Tasks run in parallel, costliest first, each thread taking the next one as it frees up.
void gram_spectra(const std::vector<int64_t>& rows, int64_t d, const Fill& fill, const Reduce& reduce) {
  std::vector<int64_t> small, large;
  for (int64_t i = 0; i < static_cast<int64_t>(rows.size()); ++i) {
    if (rows[i] <= 0) continue;
    (rows[i] <= d ? small : large).push_back(i);
  }
  if (small.size() == 1 && large.empty()) std::swap(small, large);  // one matrix: LAPACK with every thread
  std::stable_sort(small.begin(), small.end(), [&](int64_t a, int64_t b) { return rows[a] < rows[b]; });

  struct Task {
    bool interleaved;
    int64_t first, count;  // a range of `small`, or one entry of `large`
    double cost;
  };
  std::vector<Task> tasks;
  int64_t group_rows = 0, large_rows = 0, large_side = 0;  // buffer sizes
  for (size_t b = 0; b < small.size(); b += kLanes) {
    const int64_t count = std::min<int64_t>(kLanes, small.size() - b);
    const int64_t n = rows[small[b + count - 1]];  // the largest of the group
    group_rows = std::max(group_rows, n);
    tasks.push_back({true, static_cast<int64_t>(b), count, static_cast<double>(kLanes) * n * n * d});
  }
  for (size_t j = 0; j < large.size(); ++j) {
    const int64_t r = rows[large[j]], side = std::min(r, d);
    large_rows = std::max(large_rows, r);
    large_side = std::max(large_side, side);
    tasks.push_back({false, static_cast<int64_t>(j), 1, static_cast<double>(side) * side * (r + side)});
  }
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });
  const int64_t n3_max = (group_rows + kGramBlock - 1) / kGramBlock * kGramBlock;
  const auto opts = at::TensorOptions().dtype(at::kDouble);

  auto worker = [&](std::atomic<size_t>& next) {
    // Small interleaved buffers (about 1 MB for 64 x 384 matrices) stay with the thread
    // between calls: fresh pages would cost more than the work done in them.
    const size_t need = n3_max * (d + n3_max + 1) * kLanes + interleaved_eigen_workspace(n3_max);
    thread_local std::vector<double> kept;
    std::vector<double> local;
    std::vector<double>& buffer = need * sizeof(double) <= kRetainedBytes ? kept : local;
    if (buffer.size() < need) buffer.resize(need);
    double* const zi = buffer.data();            // (n3, d) x kLanes
    double* const gi = zi + n3_max * d * kLanes;  // (n3, n3) x kLanes
    double* const eigi = gi + n3_max * n3_max * kLanes;
    double* const work = eigi + n3_max * kLanes;
    std::vector<double> eig(std::max(large_side, group_rows));
    std::vector<double> z, g;  // one matrix: (rows, d) and its Gram
    SymmetricEigen eigen;
    // Gram eigenvalues of one row-major (r, d) matrix in z, through BLAS + LAPACK.
    auto solve_one = [&](int64_t r) {
      const int64_t side = std::min(r, d);
      g.resize(side * side);
      const at::Tensor zt = at::from_blob(z.data(), {r, d}, opts);
      at::Tensor gt = at::from_blob(g.data(), {side, side}, opts);
      if (r <= d)
        at::mm_out(gt, zt, zt.t());
      else
        at::mm_out(gt, zt.t(), zt);
      eigen.values(g.data(), side, side, eig.data());
      return side;
    };
    for (size_t t = next++; t < tasks.size(); t = next++) {
      const Task& task = tasks[t];
      if (!task.interleaved) {
        const int64_t id = large[task.first], r = rows[id];
        z.resize(r * d);
        fill(id, z.data(), 1);
        reduce(id, eig.data(), solve_one(r));
        continue;
      }
      const int64_t* ids = small.data() + task.first;
      const int64_t n = rows[ids[task.count - 1]];
      const int64_t n3 = (n + kGramBlock - 1) / kGramBlock * kGramBlock;
      for (int64_t q = 0; q < kLanes; ++q) {
        const int64_t r = q < task.count ? rows[ids[q]] : 0;
        if (r > 0) fill(ids[q], zi + q, kLanes);
        for (int64_t i = r * d; i < n3 * d; ++i) zi[i * kLanes + q] = 0.0;  // zero rows: zero eigenvalues
      }
      interleaved_gram(zi, n3, d, gi);
      const int failed = interleaved_eigenvalues(gi, n3, eigi, work);
      for (int64_t q = 0; q < task.count; ++q) {
        const int64_t r = rows[ids[q]];
        if (failed & (1 << q)) {  // the QL iteration did not converge: LAPACK on this matrix
          z.resize(r * d);
          for (int64_t i = 0; i < r * d; ++i) z[i] = zi[i * kLanes + q];
          solve_one(r);
        } else {  // its r largest eigenvalues (the others belong to the zero rows)
          for (int64_t j = 0; j < r; ++j) eig[j] = eigi[(n3 - r + j) * kLanes + q];
        }
        reduce(ids[q], eig.data(), r);
      }
    }
  };
  std::atomic<size_t> next{0};
  if (tasks.size() <= 1) {  // e.g. one big matrix: let BLAS/LAPACK use every thread
    worker(next);
    return;
  }
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks.size()));
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) { worker(next); });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cluster_css(const at::Tensor& x_in,
                                                                       const at::Tensor& labels_in, int64_t k,
                                                                       bool keep_basis) {
  check_points(x_in, "cluster_css");
  check_cpu(x_in, "cluster_css");
  check_labels(labels_in, x_in, "cluster_css");
  TORCH_CHECK(k >= 1, "dse::cluster_css: k must be >= 1, got ", k);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  check_label_range(labels, k, "cluster_css");
  const int64_t P = x.size(0), M = x.size(1), d = x.size(2);

  std::vector<int64_t> order, offsets;
  group_by_label(labels.const_data_ptr<int64_t>(), P, M, k, order, offsets);
  at::Tensor counts = at::empty({P, k}, x.options().dtype(at::kLong));
  int64_t* np = counts.data_ptr<int64_t>();
  std::vector<int64_t> rows(P * k);
  for (int64_t c = 0; c < P * k; ++c) {
    const int64_t p = c / k, j = c % k;
    np[c] = offsets[p * (k + 1) + j + 1] - offsets[p * (k + 1) + j];
    rows[c] = np[c] >= 2 ? np[c] - 1 : 0;  // clusters with fewer than 2 points are skipped
  }

  if (keep_basis) {
    auto [values, eig, vec] = cluster_css_keep_basis(x, labels, k);
    return {values.to(x.scalar_type()), counts, eig, vec};
  }
  at::Tensor values = at::zeros({P, k}, x.options().dtype(at::kDouble));
  std::vector<double> noise(P * k, 0.0);  // each cluster's centring noise floor, set by its fill
  double* vp = values.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_cluster_css_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    gram_spectra(
        rows, d,
        [&](int64_t c, double* dst, int64_t stride) {
          const int64_t p = c / k, j = c % k;
          noise[c] = fill_centred<scalar_t>(xp + p * M * d, order.data() + p * M + offsets[p * (k + 1) + j], np[c],
                                            d, dst, stride);
        },
        [&](int64_t c, const double* eig, int64_t m) {
          vp[c] = nuclear_norm_from_eigs(eig, m, noise[c]) / css_denominator(np[c], d);
        });
  });
  const auto empty = x.options().dtype(at::kDouble);
  return {values.to(x.scalar_type()), counts, at::empty({0}, empty), at::empty({0}, empty)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> effective_rank(const at::Tensor& x,
                                                              const std::optional<at::Tensor>& index,
                                                              bool keep_basis) {
  const RankRows rows(x, index, "effective_rank");
  if (keep_basis) {
    auto [values, eig, vec] = effective_rank_keep_basis(x, rows);
    return {values.to(x.scalar_type()), eig, vec};
  }
  const int64_t P = rows.P, m = rows.m, d = rows.d;
  at::Tensor out = at::empty({P}, x.options().dtype(at::kDouble));
  double* op_out = out.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_effective_rank_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    gram_spectra(
        std::vector<int64_t>(P, m), d,
        [&](int64_t p, double* dst, int64_t stride) { rows.fill(xp, p, dst, stride); },
        [&](int64_t p, const double* eig, int64_t side) {
          op_out[p] = effective_rank_from_eigs(eig, side, std::min(m, d));
        });
  });
  const auto empty = x.options().dtype(at::kDouble);
  return {out.to(x.scalar_type()), at::empty({0}, empty), at::empty({0}, empty)};
}

TORCH_LIBRARY_IMPL(dse, CPU, m) {
  m.impl("cluster_css", &cluster_css);
  m.impl("effective_rank", &effective_rank);
}

}  // namespace dse::cpu
