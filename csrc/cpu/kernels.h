// CPU kernels of the dse:: operators (schemas: csrc/ops.cpp), one source file per
// operator (cpu/<op>_cpu.cpp, forward and backward together). Declared here so the
// C++ tests can call them directly as well as through the dispatcher. Each checks
// its arguments first with common/<op>_args.h, as the CUDA kernel of the same op does.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace dse::cpu {

// cpu/kmeans_cpu.cpp
std::tuple<at::Tensor, at::Tensor, at::Tensor> kmeans(const at::Tensor& x, const at::Tensor& counts, int64_t k,
                                                      int64_t max_iters, double tol, int64_t seed, int64_t init);

// cpu/cluster_css_cpu.cpp. keep_basis: also return each cluster's centred Gram eigenvalues
// (P, k, S) and eigenvectors (P, k, S, S), S = min(M - 1, d), for the backward; else two
// empty tensors. sizes: the member counts if the caller knows them (checked).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cluster_css(
    const at::Tensor& x, const at::Tensor& labels, int64_t k, bool keep_basis = false,
    const std::optional<at::Tensor>& sizes = std::nullopt);
at::Tensor cluster_css_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& labels, int64_t k,
                                const std::optional<at::Tensor>& eigenvalues = std::nullopt,
                                const std::optional<at::Tensor>& eigenvectors = std::nullopt,
                                const std::optional<at::Tensor>& sizes = std::nullopt);

// cluster_css's values and counts with the gradient of sum(values) with respect to x (like x).
std::tuple<at::Tensor, at::Tensor, at::Tensor> cluster_css_with_gradient(
    const at::Tensor& x, const at::Tensor& labels, int64_t k, const std::optional<at::Tensor>& sizes = std::nullopt);

// cpu/effective_rank_cpu.cpp. keep_basis: also return each matrix's Gram eigenvalues (P, S)
// and eigenvectors (P, S, S), S = min(m, d), for the backward; else two empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor> effective_rank(const at::Tensor& x,
                                                              const std::optional<at::Tensor>& index = std::nullopt,
                                                              bool keep_basis = false);
at::Tensor effective_rank_backward(const at::Tensor& grad, const at::Tensor& x,
                                   const std::optional<at::Tensor>& index = std::nullopt,
                                   const std::optional<at::Tensor>& eigenvalues = std::nullopt,
                                   const std::optional<at::Tensor>& eigenvectors = std::nullopt);

// cpu/nearest_other_centroid_distance_cpu.cpp
at::Tensor nearest_other_centroid_distance(const at::Tensor& x, const at::Tensor& centroids,
                                           const at::Tensor& labels, const std::optional<at::Tensor>& valid);
std::tuple<at::Tensor, at::Tensor> nearest_other_centroid_distance_backward(const at::Tensor& grad,
                                                                            const at::Tensor& x,
                                                                            const at::Tensor& centroids,
                                                                            const at::Tensor& labels,
                                                                            const std::optional<at::Tensor>& valid);

}  // namespace dse::cpu
