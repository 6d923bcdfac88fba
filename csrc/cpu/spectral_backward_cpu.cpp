// Backward kernels of the spectral reductions (CPU).
//
// For a matrix Z = U diag(sigma) V^T and a loss with dL/dsigma_i = h_i, the
// gradient is dL/dZ = U diag(h) V^T. Through the smaller Gram matrix:
//   rows <= cols: G = Z Z^T = U diag(sigma^2) U^T,  dL/dZ = U diag(h / sigma) U^T Z
//   rows >  cols: G = Z^T Z = V diag(sigma^2) V^T,  dL/dZ = Z V diag(h / sigma) V^T
// Singular values under the noise floor (common/spectrum.h) count as exact zeros
// and get no gradient: the subgradient of the nuclear norm that is 0 on the null
// space, and the only finite choice for the entropy of the effective rank.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <vector>

#include "common/checks.h"
#include "common/spectrum.h"
#include "cpu/cluster_rows.h"
#include "cpu/kernels.h"
#include "cpu/lapack.h"
#include "cpu/rank_rows.h"

namespace dse::cpu {
namespace {

// dsigma(sigma, m, h): h[i] = dL/dsigma_i for the m ascending singular values (zeros included).
using SigmaGradient = std::function<void(const double*, int64_t, double*)>;

struct Scratch {
  std::vector<double> gram, eig, sigma, h, weighted, w;
  SymmetricEigen eigen;
};

// Eigen-decomposition of the smaller Gram matrix of z (rows x cols, row-major):
// side = min(rows, cols) eigenvalues to eig and eigenvectors to the rows of vec
// (row i at vec + i * ldv). vec also receives the Gram matrix first.
int64_t gram_basis(const double* z, int64_t rows, int64_t cols, double* eig, double* vec, int64_t ldv,
                   SymmetricEigen& eigen) {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const bool wide = rows <= cols;
  const int64_t side = wide ? rows : cols;
  const at::Tensor zt = at::from_blob(const_cast<double*>(z), {rows, cols}, opts);
  at::Tensor g = at::from_blob(vec, {side, side}, {ldv, 1}, opts);
  if (wide)
    at::mm_out(g, zt, zt.t());
  else
    at::mm_out(g, zt.t(), zt);
  eigen.vectors(vec, side, ldv, eig);
  return side;
}

// y (rows x cols) = dL/dZ for z, from z's Gram eigen-decomposition (gram_basis).
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

// y (rows x cols) = dL/dZ for z (rows x cols), both row-major float64.
// min_floor: an absolute Gram eigenvalue floor (gram_noise_floor).
void singular_gradient(const double* z, int64_t rows, int64_t cols, const SigmaGradient& dsigma, double* y,
                       Scratch& s, double min_floor = 0.0) {
  const int64_t side = std::min(rows, cols);
  s.gram.resize(side * side);
  s.eig.resize(side);
  gram_basis(z, rows, cols, s.eig.data(), s.gram.data(), side, s.eigen);
  apply_singular_gradient(z, rows, cols, s.eig.data(), s.gram.data(), side, dsigma, y, s, min_floor);
}

void sum_of_sigma(const double*, int64_t m, double* h) {
  for (int64_t i = 0; i < m; ++i) h[i] = 1.0;  // d(sum sigma) / d sigma_i
}

// Runs task(i, scratch) for i in [0, n) on all threads, costliest first.
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

}  // namespace

at::Tensor cluster_css_backward(const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& labels_in,
                                int64_t k, const std::optional<at::Tensor>& eigenvalues_in,
                                const std::optional<at::Tensor>& eigenvectors_in) {
  const char* op = "cluster_css_backward";
  check_points(x_in, op);
  check_cpu(x_in, op);
  check_labels(labels_in, x_in, op);
  const int64_t P = x_in.size(0), M = x_in.size(1), d = x_in.size(2);
  TORCH_CHECK(grad_in.dim() == 2 && grad_in.size(0) == P && grad_in.size(1) == k, "dse::", op,
              ": grad must have shape (", P, ", ", k, "), got ", grad_in.sizes());
  const at::Tensor x = x_in.contiguous(), labels = labels_in.contiguous();
  check_label_range(labels, k, op);
  const at::Tensor grad = grad_in.to(at::kDouble).contiguous();
  const double* gp = grad.const_data_ptr<double>();
  // The forward's Gram eigen-decompositions (cluster_css with keep_basis), when given.
  const bool have_basis = eigenvalues_in.has_value() && eigenvalues_in->numel() > 0;
  at::Tensor basis_eig, basis_vec;
  int64_t S = 0;
  if (have_basis) {
    TORCH_CHECK(eigenvectors_in.has_value(), "dse::", op, ": eigenvalues given without eigenvectors");
    S = std::min(M - 1, d);
    basis_eig = eigenvalues_in->contiguous();
    basis_vec = eigenvectors_in->contiguous();
    TORCH_CHECK(basis_eig.scalar_type() == at::kDouble && basis_vec.scalar_type() == at::kDouble &&
                    basis_eig.sizes() == at::IntArrayRef({P, k, S}) && basis_vec.sizes() == at::IntArrayRef({P, k, S, S}),
                "dse::", op, ": the basis must be float64 (P, k, S) eigenvalues and (P, k, S, S) eigenvectors with S = ",
                S, ", got ", basis_eig.sizes(), " and ", basis_vec.sizes());
  }

  std::vector<int64_t> order, offsets;
  group_by_label(labels.const_data_ptr<int64_t>(), P, M, k, order, offsets);
  std::vector<int64_t> ids;  // clusters with >= 2 members and a non-zero incoming gradient, largest first
  for (int64_t c = 0; c < P * k; ++c) {
    const int64_t p = c / k, j = c % k;
    if (offsets[p * (k + 1) + j + 1] - offsets[p * (k + 1) + j] >= 2 && gp[c] != 0.0) ids.push_back(c);
  }
  auto members_of = [&](int64_t c) { return order.data() + (c / k) * M + offsets[(c / k) * (k + 1) + c % k]; };
  auto size_of = [&](int64_t c) { return offsets[(c / k) * (k + 1) + c % k + 1] - offsets[(c / k) * (k + 1) + c % k]; };
  std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) { return size_of(a) > size_of(b); });

  at::Tensor out = at::zeros_like(x);  // clusters of < 2 points and ignored points get no gradient
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_cluster_css_backward_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op_out = out.data_ptr<scalar_t>();
    for_each_matrix(ids, [&](int64_t c, Scratch& s) {
      const int64_t p = c / k, n = size_of(c);
      const int64_t* members = members_of(c);
      std::vector<double> z((n - 1) * d), y((n - 1) * d);
      const double noise = fill_centred<scalar_t>(xp + p * M * d, members, n, d, z.data(), 1);
      if (have_basis)
        apply_singular_gradient(z.data(), n - 1, d, basis_eig.const_data_ptr<double>() + c * S,
                                basis_vec.const_data_ptr<double>() + c * S * S, S, sum_of_sigma, y.data(), s, noise);
      else
        singular_gradient(z.data(), n - 1, d, sum_of_sigma, y.data(), s, noise);
      scatter_centred_gradient<scalar_t>(y.data(), members, n, d, gp[c] / css_denominator(n, d),
                                         op_out + p * M * d);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cluster_css_keep_basis(const at::Tensor& x, const at::Tensor& labels,
                                                                      int64_t k) {
  const int64_t P = x.size(0), M = x.size(1), d = x.size(2), S = std::min(M - 1, d);
  std::vector<int64_t> order, offsets;
  group_by_label(labels.const_data_ptr<int64_t>(), P, M, k, order, offsets);
  auto size_of = [&](int64_t c) { return offsets[(c / k) * (k + 1) + c % k + 1] - offsets[(c / k) * (k + 1) + c % k]; };
  std::vector<int64_t> ids;
  for (int64_t c = 0; c < P * k; ++c)
    if (size_of(c) >= 2) ids.push_back(c);
  std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) { return size_of(a) > size_of(b); });
  const auto opts = x.options().dtype(at::kDouble);
  at::Tensor values = at::zeros({P, k}, opts), eig = at::zeros({P, k, S}, opts), vec = at::zeros({P, k, S, S}, opts);
  double* vp = values.data_ptr<double>();
  double* ep = eig.data_ptr<double>();
  double* gp = vec.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_cluster_css_keep_basis_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    for_each_matrix(ids, [&](int64_t c, Scratch& s) {
      const int64_t p = c / k, n = size_of(c);
      std::vector<double> z((n - 1) * d);
      const double noise = fill_centred<scalar_t>(xp + p * M * d, order.data() + p * M + offsets[p * (k + 1) + c % k],
                                                  n, d, z.data(), 1);
      const int64_t side = gram_basis(z.data(), n - 1, d, ep + c * S, gp + c * S * S, S, s.eigen);
      vp[c] = nuclear_norm_from_eigs(ep + c * S, side, noise) / css_denominator(n, d);
    });
  });
  return {values, eig, vec};
}

namespace {

// dL/dsigma of the normalized effective rank, scaled by `scale` (the incoming gradient / min(m, d)):
// erank = exp(H) / min(m, d), H = -sum p_i log p_i, p_i = sigma_i / S, so
// d erank / d sigma_i = exp(H) (-log p_i - H) / S / min(m, d) for sigma_i > 0.
SigmaGradient effective_rank_sigma_gradient(double scale) {
  return [scale](const double* sigma, int64_t count, double* h) {
    double total = 0.0;
    for (int64_t i = 0; i < count; ++i) total += sigma[i];
    if (!(total > 0.0)) return;  // all-zero matrix: erank is 0 and flat
    double entropy = 0.0;
    for (int64_t i = 0; i < count; ++i)
      if (sigma[i] > 0.0) entropy -= sigma[i] / total * std::log(sigma[i] / total);
    const double e = std::exp(entropy);
    for (int64_t i = 0; i < count; ++i)
      if (sigma[i] > 0.0) h[i] = scale * e * (-std::log(sigma[i] / total) - entropy) / total;
  };
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> effective_rank_keep_basis(const at::Tensor& x, const RankRows& rows) {
  const int64_t P = rows.P, m = rows.m, d = rows.d, S = std::min(m, d);
  const auto opts = x.options().dtype(at::kDouble);
  at::Tensor values = at::empty({P}, opts), eig = at::zeros({P, S}, opts), vec = at::zeros({P, S, S}, opts);
  double* vp = values.data_ptr<double>();
  double* ep = eig.data_ptr<double>();
  double* gp = vec.data_ptr<double>();
  std::vector<int64_t> ids(P);
  for (int64_t p = 0; p < P; ++p) ids[p] = p;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_effective_rank_keep_basis_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    for_each_matrix(ids, [&](int64_t p, Scratch& s) {
      std::vector<double> z(m * d);
      rows.fill(xp, p, z.data(), 1);
      gram_basis(z.data(), m, d, ep + p * S, gp + p * S * S, S, s.eigen);
      vp[p] = effective_rank_from_eigs(ep + p * S, S, S);
    });
  });
  return {values, eig, vec};
}

at::Tensor effective_rank_backward(const at::Tensor& grad_in, const at::Tensor& x,
                                   const std::optional<at::Tensor>& index, const std::optional<at::Tensor>& eigenvalues_in,
                                   const std::optional<at::Tensor>& eigenvectors_in) {
  const char* op = "effective_rank_backward";
  const RankRows rows(x, index, op);
  const int64_t P = rows.P, m = rows.m, d = rows.d, S = std::min(m, d);
  TORCH_CHECK(grad_in.dim() == 1 && grad_in.size(0) == P, "dse::", op, ": grad must have shape (", P, ",), got ",
              grad_in.sizes());
  const at::Tensor grad = grad_in.to(at::kDouble).contiguous();
  const double* gp = grad.const_data_ptr<double>();
  // The forward's Gram eigen-decompositions (effective_rank with keep_basis), when given.
  const bool have_basis = eigenvalues_in.has_value() && eigenvalues_in->numel() > 0;
  at::Tensor basis_eig, basis_vec;
  if (have_basis) {
    TORCH_CHECK(eigenvectors_in.has_value(), "dse::", op, ": eigenvalues given without eigenvectors");
    basis_eig = eigenvalues_in->contiguous();
    basis_vec = eigenvectors_in->contiguous();
    TORCH_CHECK(basis_eig.scalar_type() == at::kDouble && basis_vec.scalar_type() == at::kDouble &&
                    basis_eig.sizes() == at::IntArrayRef({P, S}) && basis_vec.sizes() == at::IntArrayRef({P, S, S}),
                "dse::", op, ": the basis must be float64 (P, S) eigenvalues and (P, S, S) eigenvectors with S = ", S,
                ", got ", basis_eig.sizes(), " and ", basis_vec.sizes());
  }
  std::vector<int64_t> ids;
  for (int64_t p = 0; p < P; ++p)
    if (gp[p] != 0.0) ids.push_back(p);

  at::Tensor per_matrix = at::zeros({P, m, d}, x.options());  // dL/dS for each matrix
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_effective_rank_backward_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* out = per_matrix.data_ptr<scalar_t>();
    for_each_matrix(ids, [&](int64_t p, Scratch& s) {
      std::vector<double> z(m * d), y(m * d);
      rows.fill(xp, p, z.data(), 1);
      const SigmaGradient dsigma = effective_rank_sigma_gradient(gp[p] / static_cast<double>(S));
      if (have_basis)
        apply_singular_gradient(z.data(), m, d, basis_eig.const_data_ptr<double>() + p * S,
                                basis_vec.const_data_ptr<double>() + p * S * S, S, dsigma, y.data(), s, 0.0);
      else
        singular_gradient(z.data(), m, d, dsigma, y.data(), s);
      for (int64_t i = 0; i < m * d; ++i) out[p * m * d + i] = static_cast<scalar_t>(y[i]);
    });
  });
  if (!rows.index.defined()) return per_matrix;
  return at::zeros_like(x, at::MemoryFormat::Contiguous)
      .index_add_(0, rows.index.reshape({-1}), per_matrix.reshape({P * m, d}));
}

TORCH_LIBRARY_IMPL(dse, CPU, m) {
  m.impl("cluster_css_backward", &cluster_css_backward);
  m.impl("effective_rank_backward", &effective_rank_backward);
}

}  // namespace dse::cpu
