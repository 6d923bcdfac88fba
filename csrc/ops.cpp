// The one place that defines every dse:: operator schema.
//
// Every operator is one vertical slice with one name through every layer:
//   csrc/common/<op>_args.h       the argument checks (shapes, dtypes, devices, values)
//                                 that its kernels on every device call first; the
//                                 rule for each argument is documented there
//   csrc/cpu/<op>_cpu.cpp         its CPU kernels, forward and backward
//                                 (TORCH_LIBRARY_IMPL(dse, CPU, m))
//   csrc/cuda/<op>_cuda.cu        its CUDA kernels, forward and backward
//                                 (TORCH_LIBRARY_IMPL(dse, CUDA, m))
// for <op> in kmeans, cluster_css, effective_rank, nearest_other_centroid_distance.
// Fake (meta) kernels and the autograd formulas, which call the *_backward ops, are
// registered from the Python package dse_ext with torch.library (README.md, Layout).
#include <torch/library.h>

TORCH_LIBRARY(dse, m) {
  // Batched k-means over P independent problems.
  //   x (P, M, d) float; counts (P,) int64, on the CPU or on x's device: problem p
  //   uses the first counts[p] points (the rest is padding and gets label -1);
  //   init 0 = k-means++ with D^2 sampling, 1 = k-means++ with D sampling (the
  //   released DSE code).
  //   Returns centroids (P, k, d), labels (P, M) int64 and the number of Lloyd
  //   updates done per problem (P,) int64.
  m.def(
      "kmeans(Tensor x, Tensor counts, int k, int max_iters, float tol, int seed, int init)"
      " -> (Tensor centroids, Tensor labels, Tensor iterations)");
  // ... and it is not differentiable: its outputs never require grad.
  m.impl("kmeans", c10::DispatchKey::Autograd, torch::CppFunction::makeFallthrough());

  // Per-cluster centred singular-value sums.
  //   x (P, M, d), labels (P, M) int64 in [-1, k) (-1 = ignore) ->
  //   values (P, k) = sum of singular values of (C_j - mean C_j) / sqrt(max(n_j - 1, d)),
  //   0 where n_j < 2; counts (P, k) int64 = n_j. With keep_basis, also the float64
  //   eigenvalues (P, k, S) and eigenvectors (P, k, S, S), S = min(M - 1, d), of each
  //   cluster's centred Gram matrix, which the backward then reuses; else both are empty.
  //   sizes (P, k) int64 on the CPU, optional: the member counts when the caller knows them
  //   (the CUDA kernel then plans its batches without reading the device).
  m.def(
      "cluster_css(Tensor x, Tensor labels, int k, bool keep_basis=False, Tensor? sizes=None)"
      " -> (Tensor values, Tensor counts, Tensor eigenvalues, Tensor eigenvectors)");

  // cluster_css's values and counts, with unit_gradient (like x): the gradient of
  // sum(values) with respect to x, i.e. each cluster's member rows hold the gradient of its
  // own value (clusters share no row; every other row is 0). The backward of values is then
  // unit_gradient scaled row by row by the incoming gradient of the row's cluster: for a
  // caller that will ask for the gradient, one pass instead of a forward and a backward that
  // redoes its Gram products and eigensolves. CPU only.
  m.def(
      "cluster_css_with_gradient(Tensor x, Tensor labels, int k, Tensor? sizes=None)"
      " -> (Tensor values, Tensor counts, Tensor unit_gradient)");
  m.impl("cluster_css_with_gradient", c10::DispatchKey::Autograd, torch::CppFunction::makeFallthrough());

  // Normalized effective rank of each (m, d) matrix: x (P, m, d) -> values (P,).
  // With index (P, m) int64, x is a (R, d) row table and matrix p is made of
  // the rows x[index[p, 0]], ..., x[index[p, m - 1]] (no gathered copy is made).
  // With keep_basis, also the float64 eigenvalues (P, S) and eigenvectors
  // (P, S, S), S = min(m, d), of each Gram matrix, which the backward then
  // reuses; else both are empty.
  m.def(
      "effective_rank(Tensor x, Tensor? index=None, bool keep_basis=False)"
      " -> (Tensor values, Tensor eigenvalues, Tensor eigenvectors)");

  // Euclidean distance from each point to the nearest centroid other than its own.
  //   x (P, M, d), centroids (P, k, d), labels (P, M) int64 in [-1, k),
  //   valid (P, k) bool or None (None: all centroids exist) -> (P, M).
  //   Points with label -1 or with no other valid centroid get 0.
  m.def(
      "nearest_other_centroid_distance(Tensor x, Tensor centroids, Tensor labels, Tensor? valid)"
      " -> Tensor");

  // Backward of the differentiable ops (called by their autograd formulas, which the
  // Python package registers). Each returns the gradient of sum(grad * op(...)) with
  // respect to the points x (a tensor like x; for effective_rank with index, like
  // the row table) and, for the distances, the centroids. eigenvalues/eigenvectors:
  // the bases the forward returned with keep_basis=True (float64, on x's device, on
  // the device whose forward computed them), or None / empty tensors to recompute them.
  m.def(
      "cluster_css_backward(Tensor grad, Tensor x, Tensor labels, int k, Tensor? eigenvalues=None,"
      " Tensor? eigenvectors=None, Tensor? sizes=None) -> Tensor");
  m.def(
      "effective_rank_backward(Tensor grad, Tensor x, Tensor? index=None, Tensor? eigenvalues=None,"
      " Tensor? eigenvectors=None) -> Tensor");
  m.def(
      "nearest_other_centroid_distance_backward(Tensor grad, Tensor x, Tensor centroids, Tensor labels,"
      " Tensor? valid) -> (Tensor grad_x, Tensor grad_centroids)");
}
