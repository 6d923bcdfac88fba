// CPU kernels of the dse:: operators (schemas: csrc/ops.cpp). Declared here so
// the C++ tests can call them directly as well as through the dispatcher.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace dse::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> kmeans(const at::Tensor& x, const at::Tensor& counts, int64_t k,
                                                      int64_t max_iters, double tol, int64_t seed, int64_t init);

// keep_basis: also return each cluster's centred Gram eigenvalues (P, k, S) and
// eigenvectors (P, k, S, S), S = min(M - 1, d), for the backward; else two empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cluster_css(const at::Tensor& x, const at::Tensor& labels,
                                                                       int64_t k, bool keep_basis = false);
// cluster_css's keep_basis path: (values as float64, eigenvalues, eigenvectors); inputs already checked.
std::tuple<at::Tensor, at::Tensor, at::Tensor> cluster_css_keep_basis(const at::Tensor& x, const at::Tensor& labels,
                                                                      int64_t k);

// keep_basis: also return each matrix's Gram eigenvalues (P, S) and eigenvectors (P, S, S),
// S = min(m, d), for the backward; else two empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor> effective_rank(const at::Tensor& x,
                                                              const std::optional<at::Tensor>& index = std::nullopt,
                                                              bool keep_basis = false);
struct RankRows;
// effective_rank's keep_basis path: (values as float64, eigenvalues, eigenvectors); inputs already checked.
std::tuple<at::Tensor, at::Tensor, at::Tensor> effective_rank_keep_basis(const at::Tensor& x, const RankRows& rows);

at::Tensor nearest_other_centroid_distance(const at::Tensor& x, const at::Tensor& centroids,
                                           const at::Tensor& labels, const std::optional<at::Tensor>& valid);

// Backward kernels: the gradient with respect to the points (and centroids).
at::Tensor cluster_css_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& labels, int64_t k,
                                const std::optional<at::Tensor>& eigenvalues = std::nullopt,
                                const std::optional<at::Tensor>& eigenvectors = std::nullopt);

at::Tensor effective_rank_backward(const at::Tensor& grad, const at::Tensor& x,
                                   const std::optional<at::Tensor>& index = std::nullopt,
                                   const std::optional<at::Tensor>& eigenvalues = std::nullopt,
                                   const std::optional<at::Tensor>& eigenvectors = std::nullopt);

std::tuple<at::Tensor, at::Tensor> nearest_other_centroid_distance_backward(const at::Tensor& grad,
                                                                            const at::Tensor& x,
                                                                            const at::Tensor& centroids,
                                                                            const at::Tensor& labels,
                                                                            const std::optional<at::Tensor>& valid);

// Eigenvalues (ascending) of the smaller Gram matrix of a float64 (n, d) matrix:
// A A^T when n <= d, else A^T A. Exposed for the tests.
at::Tensor gram_eigenvalues(const at::Tensor& a);

}  // namespace dse::cpu
