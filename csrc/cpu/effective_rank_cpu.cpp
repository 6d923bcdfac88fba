// dse::effective_rank and dse::effective_rank_backward on the CPU: the normalized
// effective rank of many (m, d) matrices and its gradient.
//
// Singular values are the square roots of the eigenvalues of each matrix's smaller
// Gram matrix, in float64. The forward computes eigenvalues only, four matrices at a
// time (cpu/gram_spectra.h); with keep_basis, and in the backward, each Gram matrix
// is decomposed with its eigenvectors (cpu/singular_gradient.h). Matrices are read
// in place (strided slices, or table rows through the index: cpu/rank_rows.h); tall
// ones with keep_basis and in the backward 256 rows at a time (streamed_gram,
// streamed_product), never as a whole float64 copy.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/effective_rank_args.h"
#include "common/spectrum.h"
#include "cpu/output_cache.h"
#include "cpu/gram_spectra.h"
#include "cpu/kernels.h"
#include "cpu/rank_rows.h"
#include "cpu/singular_gradient.h"

namespace dse::cpu {
namespace {

// keep_basis: values (P,) float64, eigenvalues (P, S) and eigenvectors (P, S, S).
std::tuple<at::Tensor, at::Tensor, at::Tensor> rank_with_basis(const EffectiveRankArgs& in, const RankRows& rows) {
  const int64_t P = in.P, m = in.m, d = in.d, S = in.S;
  const auto opts = in.x.options().dtype(at::kDouble);
  // Every matrix fills its S eigenpairs: no zero fill first.
  at::Tensor values = at::empty({P}, opts), eig = at::empty({P, S}, opts), vec = at::empty({P, S, S}, opts);
  double* vp = values.data_ptr<double>();
  double* ep = eig.data_ptr<double>();
  double* gp = vec.data_ptr<double>();
  std::vector<int64_t> ids(P);
  for (int64_t p = 0; p < P; ++p) ids[p] = p;
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "dse_effective_rank_keep_basis_cpu", [&] {
    const scalar_t* xp = in.x.const_data_ptr<scalar_t>();
    for_each_matrix(ids, [&](int64_t p, Scratch& s) {
      if (streamed(m, d)) {  // tall: its Gram Z^T Z summed block by block (cpu/singular_gradient.h)
        streamed_gram(m, d, [&](int64_t r0, int64_t r1, double* dst) { rows.fill_rows(xp, p, r0, r1, dst); },
                      gp + p * S * S, S);
        s.eigen.vectors(gp + p * S * S, S, S, ep + p * S);
      } else {
        const auto z = uninitialized_doubles(m * d);
        rows.fill(xp, p, z.get(), 1);
        gram_basis(z.get(), m, d, ep + p * S, gp + p * S * S, S, s.eigen);
      }
      vp[p] = effective_rank_from_eigs(ep + p * S, S, S);
    });
  });
  return {values, eig, vec};
}

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> effective_rank(const at::Tensor& x,
                                                              const std::optional<at::Tensor>& index,
                                                              bool keep_basis) {
  const EffectiveRankArgs in = check_effective_rank_args(x, index, c10::DeviceType::CPU);
  const RankRows rows(in);
  if (keep_basis) {
    auto [values, eig, vec] = rank_with_basis(in, rows);
    return {values.to(x.scalar_type()), eig, vec};
  }
  const int64_t P = in.P, m = in.m, d = in.d;
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

at::Tensor effective_rank_backward(const at::Tensor& grad_in, const at::Tensor& x,
                                   const std::optional<at::Tensor>& index,
                                   const std::optional<at::Tensor>& eigenvalues,
                                   const std::optional<at::Tensor>& eigenvectors) {
  const EffectiveRankBackwardArgs in =
      check_effective_rank_backward_args(grad_in, x, index, eigenvalues, eigenvectors, c10::DeviceType::CPU);
  const RankRows rows(in);
  const int64_t P = in.P, m = in.m, d = in.d, S = in.S;
  const double* gp = in.grad.const_data_ptr<double>();
  const bool have_basis = in.basis.present();  // the forward's Gram eigen-decompositions (keep_basis)
  std::vector<int64_t> ids;
  for (int64_t p = 0; p < P; ++p)
    if (gp[p] != 0.0) ids.push_back(p);

  at::Tensor per_matrix = empty_filled_output({P, m, d}, x.options());  // dL/dS for each matrix
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_effective_rank_backward_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* out = per_matrix.data_ptr<scalar_t>();
    for (int64_t p = 0; p < P; ++p)  // matrices with a zero incoming gradient; the others are written in full
      if (gp[p] == 0.0) std::fill(out + p * m * d, out + (p + 1) * m * d, scalar_t(0));
    for_each_matrix(ids, [&](int64_t p, Scratch& s) {
      const SigmaGradient dsigma = effective_rank_sigma_gradient(gp[p] / static_cast<double>(S));
      scalar_t* dst = out + p * m * d;
      if (streamed(m, d)) {  // tall: Z V f(L) V^T, Z read and the result written block by block
        const RowBlockFill fill = [&](int64_t r0, int64_t r1, double* z) { rows.fill_rows(xp, p, r0, r1, z); };
        const double *eig = nullptr, *vec = nullptr;
        if (have_basis) {
          eig = in.basis.eigenvalues.const_data_ptr<double>() + p * S;
          vec = in.basis.eigenvectors.const_data_ptr<double>() + p * S * S;
        } else {
          s.gram.resize(S * S);
          s.eig.resize(S);
          streamed_gram(m, d, fill, s.gram.data(), S);
          s.eigen.vectors(s.gram.data(), S, S, s.eig.data());
          eig = s.eig.data();
          vec = s.gram.data();
        }
        const double* w = gradient_weights(eig, vec, S, S, dsigma, s, 0.0);
        streamed_product(m, d, fill, w, S, [&](int64_t r0, int64_t r1, const double* y) {
          for (int64_t i = 0; i < (r1 - r0) * d; ++i) dst[r0 * d + i] = static_cast<scalar_t>(y[i]);
        });
        return;
      }
      const auto z = uninitialized_doubles(m * d), y = uninitialized_doubles(m * d);
      rows.fill(xp, p, z.get(), 1);
      if (have_basis)
        apply_singular_gradient(z.get(), m, d, in.basis.eigenvalues.const_data_ptr<double>() + p * S,
                                in.basis.eigenvectors.const_data_ptr<double>() + p * S * S, S, dsigma, y.get(), s,
                                0.0);
      else
        singular_gradient(z.get(), m, d, dsigma, y.get(), s);
      at::parallel_for(0, m * d, 1 << 16, [&](int64_t i0, int64_t i1) {  // threads for one large matrix
        for (int64_t i = i0; i < i1; ++i) dst[i] = static_cast<scalar_t>(y[i]);
      });
    });
  });
  if (!in.index.defined()) return per_matrix;
  return at::zeros_like(x, at::MemoryFormat::Contiguous)
      .index_add_(0, in.index.reshape({-1}), per_matrix.reshape({P * m, d}));
}

TORCH_LIBRARY_IMPL(dse, CPU, m) {
  m.impl("effective_rank", &effective_rank);
  m.impl("effective_rank_backward", &effective_rank_backward);
}

}  // namespace dse::cpu
