// Batched symmetric eigensolver on the GPU (cuSOLVER), with our own handle per
// device and thread (torch's handle pool lives in a library extensions do not link).
#pragma once
#include <ATen/ATen.h>

namespace dse::cuda {

// Eigen-decomposition of a batch of symmetric float64 matrices gram (B, n, n) on
// a CUDA device (read as full symmetric matrices). Returns the ascending
// eigenvalues (B, n) and, when `vectors`, the eigenvectors (B, n, n) with row i
// of each matrix the unit eigenvector of eigenvalue i (else an empty tensor).
// Uses cusolverDnXsyevBatched, in chunks it accepts; a non-zero info raises.
std::tuple<at::Tensor, at::Tensor> batched_symmetric_eigen(const at::Tensor& gram, bool vectors);

}  // namespace dse::cuda
