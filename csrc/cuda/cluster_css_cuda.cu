// Per-cluster centred singular-value sums on the GPU, forward and backward.
//
// Points are grouped by (problem, label) with one stable sort. Every cluster's
// Householder-centred (n - 1, d) matrix (common/spectrum.h) is written, zero
// padded to the largest cluster, into one batch; one batched GEMM forms the Gram
// matrices (Z Z^T, or Z^T Z when the largest cluster is taller than wide: zero
// rows only add zero eigenvalues), the batched cuSOLVER eigensolver decomposes
// them, and per-cluster kernels reduce them with the routines the CPU kernels
// use. Sums run over each cluster's members in order, so results are deterministic.
#include <torch/library.h>

#include <cmath>

#include "common/checks.h"
#include "common/spectrum.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/solver.cuh"

namespace dse::cuda {
namespace {

// The members of every cluster, contiguous in `order` (flat point indices into (P * M, d)).
struct Clusters {
  at::Tensor order;    // (P * M) points sorted by (problem, label); ignored points last in each problem
  at::Tensor start;    // (P * k) first position in `order` of each cluster
  at::Tensor counts;   // (P, k) int64 members
  int64_t P, M, d, k;
  int64_t rows;        // rows of the padded centred matrices: largest cluster - 1 (>= 1)
  int64_t side;        // Gram side: min(rows, d)
  int64_t S;           // basis side of the op's schema: min(M - 1, d)
};

Clusters group(const at::Tensor& x, const at::Tensor& labels, int64_t k) {
  Clusters g;
  g.P = x.size(0), g.M = x.size(1), g.d = x.size(2), g.k = k;
  const at::Tensor problem = at::arange(g.P, labels.options()).unsqueeze(1);
  const at::Tensor key = (problem * (k + 1) + labels.where(labels >= 0, at::full({}, k, labels.options()))).reshape(-1);
  g.order = std::get<1>(at::sort(key, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  const at::Tensor bins = at::bincount(key, {}, g.P * (k + 1));
  const at::Tensor starts = at::cumsum(bins, 0) - bins;  // exclusive prefix sums
  g.start = starts.view({g.P, k + 1}).narrow(1, 0, k).contiguous().view({-1});
  g.counts = bins.view({g.P, k + 1}).narrow(1, 0, k).contiguous();
  g.rows = std::max<int64_t>(1, g.counts.max().item<int64_t>() - 1);  // one synchronisation
  g.side = std::min(g.rows, g.d);
  g.S = std::min(g.M - 1, g.d);
  return g;
}

// Column sums (c, t) and the largest squared row norm of each cluster, over its members in order.
template <typename scalar_t>
__global__ void cluster_sums_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ order,
                                    const int64_t* __restrict__ start, const int64_t* __restrict__ counts,
                                    int64_t clusters, int64_t d, double* __restrict__ colsum,
                                    double* __restrict__ max_sq) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= clusters * (d + 1)) return;
  const int64_t c = e / (d + 1), t = e % (d + 1);
  const int64_t* members = order + start[c];
  double acc = 0.0;
  for (int64_t r = 0; r < counts[c]; ++r) {
    const scalar_t* row = x + members[r] * d;
    if (t < d) {
      acc += static_cast<double>(row[t]);
    } else {  // the extra column: the largest squared row norm
      double sq = 0.0;
      for (int64_t u = 0; u < d; ++u) sq += static_cast<double>(row[u]) * static_cast<double>(row[u]);
      acc = sq > acc ? sq : acc;
    }
  }
  if (t < d)
    colsum[c * d + t] = acc;
  else
    max_sq[c] = acc;
}

// z[c, r, t]: the Householder-centred matrix of cluster c, zero beyond its n_c - 1 rows.
template <typename scalar_t>
__global__ void centred_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ order,
                               const int64_t* __restrict__ start, const int64_t* __restrict__ counts,
                               const double* __restrict__ colsum, int64_t clusters, int64_t rows, int64_t d,
                               double* __restrict__ z) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= clusters * rows * d) return;
  const int64_t t = e % d, r = (e / d) % rows, c = e / (d * rows);
  const int64_t n = counts[c];
  double value = 0.0;
  if (n >= 2 && r < n - 1) {
    const int64_t* members = order + start[c];
    const HouseholderCentering h = householder_centering(n);
    value = householder_centered(static_cast<double>(x[members[r] * d + t]), colsum[c * d + t],
                                 static_cast<double>(x[members[n - 1] * d + t]), h);
  }
  z[e] = value;
}

// values[c] = css of cluster c from its Gram eigenvalues (the largest min(n_c - 1, d) of `side`).
__global__ void css_from_eigs_kernel(const double* __restrict__ eig, const int64_t* __restrict__ counts,
                                     const double* __restrict__ max_sq, int64_t clusters, int64_t side, int64_t d,
                                     double* __restrict__ values) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= clusters) return;
  const int64_t n = counts[c];
  if (n < 2) {
    values[c] = 0.0;
    return;
  }
  const int64_t m = (n - 1) < d ? (n - 1) : d;
  const double noise = centring_noise_floor(n, sqrt(max_sq[c]));
  values[c] = nuclear_norm_from_eigs(eig + c * side + (side - m), m, noise) / css_denominator(n, d);
}

// f[c, i] = grad_c / denominator / sigma_i for the singular values above the floor, else 0.
__global__ void css_gradient_weights_kernel(const double* __restrict__ eig, const int64_t* __restrict__ counts,
                                            const double* __restrict__ max_sq, const double* __restrict__ grad,
                                            int64_t clusters, int64_t side, int64_t d, double* __restrict__ f) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= clusters) return;
  const int64_t n = counts[c];
  double* fc = f + c * side;
  for (int64_t i = 0; i < side; ++i) fc[i] = 0.0;
  if (n < 2) return;
  const int64_t m = (n - 1) < d ? (n - 1) : d;
  const double* e = eig + c * side + (side - m);
  const double floor = gram_noise_floor(e, m, centring_noise_floor(n, sqrt(max_sq[c])));
  const double scale = grad[c] / css_denominator(n, d);
  for (int64_t i = 0; i < m; ++i) {
    const double s = singular_from_eig(e[i], floor);
    if (s > 0.0) fc[side - m + i] = scale / s;
  }
}

// Adjoint of the centring: grad_x for the members of every cluster from y = dL/dZ.
template <typename scalar_t>
__global__ void scatter_centred_kernel(const double* __restrict__ y, const int64_t* __restrict__ order,
                                       const int64_t* __restrict__ start, const int64_t* __restrict__ counts,
                                       int64_t clusters, int64_t rows, int64_t d, scalar_t* __restrict__ grad_x) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= clusters * d) return;
  const int64_t c = e / d, t = e % d, n = counts[c];
  if (n < 2) return;
  const int64_t* members = order + start[c];
  const double* yc = y + c * rows * d;
  const HouseholderCentering h = householder_centering(n);
  double total = 0.0;
  for (int64_t r = 0; r + 1 < n; ++r) total += yc[r * d + t];
  const double coef = h.a * h.beta;
  for (int64_t r = 0; r + 1 < n; ++r) grad_x[members[r] * d + t] = static_cast<scalar_t>(yc[r * d + t] - coef * total);
  grad_x[members[n - 1] * d + t] = static_cast<scalar_t>(h.a * total);
}

struct Centred {
  at::Tensor z;       // (clusters, rows, d) float64
  at::Tensor max_sq;  // (clusters,) float64
};

Centred centre(const at::Tensor& x, const Clusters& g) {
  const int64_t clusters = g.P * g.k;
  const auto dopts = x.options().dtype(at::kDouble);
  at::Tensor colsum = at::empty({clusters, g.d}, dopts), max_sq = at::empty({clusters}, dopts);
  at::Tensor z = at::empty({clusters, g.rows, g.d}, dopts);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_css_centre_cuda", [&] {
    cluster_sums_kernel<scalar_t><<<blocks_for(clusters * (g.d + 1)), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), g.order.const_data_ptr<int64_t>(), g.start.const_data_ptr<int64_t>(),
        g.counts.const_data_ptr<int64_t>(), clusters, g.d, colsum.data_ptr<double>(), max_sq.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    centred_kernel<scalar_t><<<blocks_for(z.numel()), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), g.order.const_data_ptr<int64_t>(), g.start.const_data_ptr<int64_t>(),
        g.counts.const_data_ptr<int64_t>(), colsum.const_data_ptr<double>(), clusters, g.rows, g.d,
        z.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {z, max_sq};
}

at::Tensor gram(const at::Tensor& z, const Clusters& g) {
  const at::Tensor zt = z.transpose(1, 2);
  return (g.rows <= g.d ? at::bmm(z, zt) : at::bmm(zt, z)).contiguous();
}

void check_inputs(const at::Tensor& x, const at::Tensor& labels, int64_t k, const char* op) {
  check_points(x, op);
  TORCH_CHECK(x.is_cuda(), "dse::", op, ": expected a CUDA tensor, got one on ", x.device());
  check_labels(labels, x, op);
  TORCH_CHECK(k >= 1, "dse::", op, ": k must be >= 1, got ", k);
  check_label_range(labels, k, op);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cluster_css(const at::Tensor& x_in,
                                                                       const at::Tensor& labels_in, int64_t k,
                                                                       bool keep_basis) {
  check_inputs(x_in, labels_in, k, "cluster_css");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), labels = labels_in.contiguous();
  const Clusters g = group(x, labels, k);
  const Centred centred = centre(x, g);
  auto [eig, vec] = batched_symmetric_eigen(gram(centred.z, g), keep_basis);
  const int64_t clusters = g.P * k;
  at::Tensor values = at::empty({g.P, k}, eig.options());
  css_from_eigs_kernel<<<blocks_for(clusters), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      eig.const_data_ptr<double>(), g.counts.const_data_ptr<int64_t>(), centred.max_sq.const_data_ptr<double>(),
      clusters, g.side, g.d, values.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto dopts = eig.options();
  if (!keep_basis) return {values.to(x.scalar_type()), g.counts, at::empty({0}, dopts), at::empty({0}, dopts)};
  // The schema's (P, k, S, S) basis, S = min(M - 1, d) >= side: this batch's bases in the leading block.
  at::Tensor basis_eig = at::zeros({g.P, k, g.S}, dopts), basis_vec = at::zeros({g.P, k, g.S, g.S}, dopts);
  basis_eig.narrow(2, 0, g.side).copy_(eig.view({g.P, k, g.side}));
  basis_vec.narrow(2, 0, g.side).narrow(3, 0, g.side).copy_(vec.view({g.P, k, g.side, g.side}));
  return {values.to(x.scalar_type()), g.counts, basis_eig, basis_vec};
}

at::Tensor cluster_css_backward(const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& labels_in,
                                int64_t k, const std::optional<at::Tensor>& eigenvalues,
                                const std::optional<at::Tensor>& eigenvectors) {
  const char* op = "cluster_css_backward";
  check_inputs(x_in, labels_in, k, op);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), labels = labels_in.contiguous();
  const Clusters g = group(x, labels, k);
  TORCH_CHECK(grad_in.dim() == 2 && grad_in.size(0) == g.P && grad_in.size(1) == k, "dse::", op,
              ": grad must have shape (", g.P, ", ", k, "), got ", grad_in.sizes());
  check_on_device(grad_in, x, op, "grad");
  const Centred centred = centre(x, g);
  const int64_t clusters = g.P * k;
  at::Tensor eig, vec;
  if (eigenvalues.has_value() && eigenvalues->numel() > 0) {  // the forward's kept eigenbases
    TORCH_CHECK(eigenvectors.has_value() && eigenvalues->sizes() == at::IntArrayRef({g.P, k, g.S}) &&
                    eigenvectors->sizes() == at::IntArrayRef({g.P, k, g.S, g.S}),
                "dse::", op, ": the basis must be (P, k, S) eigenvalues and (P, k, S, S) eigenvectors with S = ", g.S);
    eig = eigenvalues->narrow(2, 0, g.side).reshape({clusters, g.side}).to(at::kDouble).contiguous();
    vec = eigenvectors->narrow(2, 0, g.side).narrow(3, 0, g.side).reshape({clusters, g.side, g.side})
              .to(at::kDouble).contiguous();
  } else {
    std::tie(eig, vec) = batched_symmetric_eigen(gram(centred.z, g), true);
  }
  const at::Tensor grad = grad_in.to(at::kDouble).contiguous();
  at::Tensor f = at::empty({clusters, g.side}, eig.options());
  const auto stream = at::cuda::getCurrentCUDAStream();
  css_gradient_weights_kernel<<<blocks_for(clusters), kThreads, 0, stream>>>(
      eig.const_data_ptr<double>(), g.counts.const_data_ptr<int64_t>(), centred.max_sq.const_data_ptr<double>(),
      grad.const_data_ptr<double>(), clusters, g.side, g.d, f.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // dL/dZ = U diag(1 / sigma) U^T Z (or Z V diag(1 / sigma) V^T), scaled per cluster.
  const at::Tensor w = at::bmm(vec.transpose(1, 2), vec * f.unsqueeze(-1));
  const at::Tensor y = (g.rows <= g.d ? at::bmm(w, centred.z) : at::bmm(centred.z, w)).contiguous();
  at::Tensor grad_x = at::zeros_like(x);  // ignored points and clusters of < 2 points get no gradient
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_css_backward_cuda", [&] {
    scatter_centred_kernel<scalar_t><<<blocks_for(clusters * g.d), kThreads, 0, stream>>>(
        y.const_data_ptr<double>(), g.order.const_data_ptr<int64_t>(), g.start.const_data_ptr<int64_t>(),
        g.counts.const_data_ptr<int64_t>(), clusters, g.rows, g.d, grad_x.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_x;
}

TORCH_LIBRARY_IMPL(dse, CUDA, m) {
  m.impl("cluster_css", &cluster_css);
  m.impl("cluster_css_backward", &cluster_css_backward);
}

}  // namespace dse::cuda
