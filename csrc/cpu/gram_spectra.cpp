// Gram eigenvalues of many small matrices on the CPU (cpu/gram_spectra.h).
#include "cpu/gram_spectra.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>

#include "cpu/interleaved.h"
#include "cpu/lapack.h"

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
}  // namespace

// Matrices no taller than wide (rows_i <= d), sorted by size, go kLanes at a time through
// the interleaved Gram product and eigensolver (cpu/interleaved.h), which beat BLAS +
// LAPACK one matrix at a time at every size measured (up to 384 x 384 Grams). Taller
// ones (Gram Z^T Z of side d), or a lone matrix, go through BLAS and LAPACK.
// Tasks run in parallel, costliest first, each thread taking the next one as it frees up.
void gram_spectra(const std::vector<int64_t>& rows, int64_t d, const GramFill& fill, const GramReduce& reduce) {
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
      gram_upper(z.data(), r, d, g.data(), side);  // the eigensolver reads the upper triangle only
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

}  // namespace dse::cpu
