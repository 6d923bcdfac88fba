// Gram eigenbases and gradients through singular values on the CPU (cpu/singular_gradient.h).
#include "cpu/singular_gradient.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>

#include "common/spectrum.h"

namespace dse::cpu {

int64_t gram_basis(const double* z, int64_t rows, int64_t cols, double* eig, double* vec, int64_t ldv,
                   SymmetricEigen& eigen) {
  const int64_t side = std::min(rows, cols);
  gram_upper(z, rows, cols, vec, ldv);  // the eigensolver reads the upper triangle only
  eigen.vectors(vec, side, ldv, eig);
  return side;
}

const double* gradient_weights(const double* eig, const double* vec, int64_t ldv, int64_t side,
                               const SigmaGradient& dsigma, Scratch& s, double min_floor) {
  s.sigma.resize(side);
  s.h.assign(side, 0.0);
  s.weighted.resize(side * side);
  s.w.resize(side * side);
  const double floor = gram_noise_floor(eig, side, min_floor);
  for (int64_t i = 0; i < side; ++i) s.sigma[i] = singular_from_eig(eig[i], floor);
  dsigma(s.sigma.data(), side, s.h.data());
  // W = E^T diag(h / sigma) E with E's rows the eigenvectors.
  for (int64_t i = 0; i < side; ++i) {
    const double f = s.sigma[i] > 0.0 ? s.h[i] / s.sigma[i] : 0.0;
    for (int64_t j = 0; j < side; ++j) s.weighted[i * side + j] = f * vec[i * ldv + j];
  }
  // The same BLAS calls as at::mm_out on these row-major buffers makes (so the same bits),
  // without ATen's few microseconds per call: thousands of calls per backward.
  gemm_atb(side, side, side, vec, ldv, s.weighted.data(), side, s.w.data(), side);
  return s.w.data();
}

void apply_singular_gradient(const double* z, int64_t rows, int64_t cols, const double* eig, const double* vec,
                             int64_t ldv, const SigmaGradient& dsigma, double* y, Scratch& s, double min_floor) {
  const bool wide = rows <= cols;
  const int64_t side = wide ? rows : cols;
  const double* w = gradient_weights(eig, vec, ldv, side, dsigma, s, min_floor);
  if (wide)
    gemm_ab(rows, cols, rows, w, side, z, cols, y, cols);  // W Z
  else
    gemm_ab(rows, cols, cols, z, cols, w, side, y, cols);  // Z W
}

namespace {
constexpr int64_t kStreamSlabs = 8;  // partial Grams of streamed_gram (at most)
}  // namespace

void streamed_gram(int64_t rows, int64_t cols, const RowBlockFill& fill, double* g, int64_t ldg) {
  const int64_t blocks = (rows + kStreamRows - 1) / kStreamRows;
  const int64_t slabs = std::max<int64_t>(1, std::min(kStreamSlabs, blocks));
  // Slab j sums blocks [j * blocks / slabs, (j + 1) * blocks / slabs) in order; slab 0 into g.
  const auto partial = uninitialized_doubles((slabs - 1) * cols * cols);
  at::parallel_for(0, slabs, 1, [&](int64_t j0, int64_t j1) {
    std::vector<double> z(kStreamRows * cols);
    for (int64_t j = j0; j < j1; ++j) {
      double* dst = j == 0 ? g : partial.get() + (j - 1) * cols * cols;
      const int64_t ld = j == 0 ? ldg : cols;
      for (int64_t b = j * blocks / slabs; b < (j + 1) * blocks / slabs; ++b) {
        const int64_t r0 = b * kStreamRows, r1 = std::min(rows, r0 + kStreamRows);
        fill(r0, r1, z.data());
        column_gram_upper(z.data(), r1 - r0, cols, dst, ld, /*accumulate=*/b != j * blocks / slabs);
      }
    }
  });
  for (int64_t j = 1; j < slabs; ++j) {  // the upper triangles, in slab order
    const double* src = partial.get() + (j - 1) * cols * cols;
    at::parallel_for(0, cols, 32, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t t = i; t < cols; ++t) g[i * ldg + t] += src[i * cols + t];
    });
  }
}

void streamed_product(int64_t rows, int64_t cols, const RowBlockFill& fill, const double* w, int64_t ldw,
                      const RowBlockStore& store) {
  const int64_t blocks = (rows + kStreamRows - 1) / kStreamRows;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> z(kStreamRows * cols), y(kStreamRows * cols);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kStreamRows, r1 = std::min(rows, r0 + kStreamRows);
      fill(r0, r1, z.data());
      gemm_ab(r1 - r0, cols, cols, z.data(), cols, w, ldw, y.data(), cols);
      store(r0, r1, y.data());
    }
  });
}

void singular_gradient(const double* z, int64_t rows, int64_t cols, const SigmaGradient& dsigma, double* y,
                       Scratch& s, double min_floor) {
  const int64_t side = std::min(rows, cols);
  s.gram.resize(side * side);
  s.eig.resize(side);
  gram_basis(z, rows, cols, s.eig.data(), s.gram.data(), side, s.eigen);
  apply_singular_gradient(z, rows, cols, s.eig.data(), s.gram.data(), side, dsigma, y, s, min_floor);
}

void for_each_matrix(const std::vector<int64_t>& ids, const std::function<void(int64_t, Scratch&)>& task) {
  std::atomic<size_t> next{0};
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ids.size()));
  auto work = [&]() {
    Scratch scratch;
    for (size_t t = next++; t < ids.size(); t = next++) task(ids[t], scratch);
  };
  if (ids.size() <= 1) {
    work();  // one matrix: BLAS and LAPACK may use every thread
    return;
  }
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) { work(); });
}

}  // namespace dse::cpu
