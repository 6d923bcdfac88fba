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

void apply_singular_gradient(const double* z, int64_t rows, int64_t cols, const double* eig, const double* vec,
                             int64_t ldv, const SigmaGradient& dsigma, double* y, Scratch& s, double min_floor) {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const bool wide = rows <= cols;
  const int64_t side = wide ? rows : cols;
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
  const at::Tensor e = at::from_blob(const_cast<double*>(vec), {side, side}, {ldv, 1}, opts);
  at::Tensor w = at::from_blob(s.w.data(), {side, side}, opts);
  at::mm_out(w, e.t(), at::from_blob(s.weighted.data(), {side, side}, opts));
  const at::Tensor zt = at::from_blob(const_cast<double*>(z), {rows, cols}, opts);
  at::Tensor yt = at::from_blob(y, {rows, cols}, opts);
  if (wide)
    at::mm_out(yt, w, zt);
  else
    at::mm_out(yt, zt, w);
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
