// dse::cluster_css and dse::cluster_css_backward on the GPU: per-cluster centred
// singular-value sums and their gradient. Arguments are checked first by
// common/cluster_css_args.h, as on the CPU.
//
// Points are grouped by (problem, label) with one stable sort. The cluster sizes, given
// by the caller (sizes) or else read on the host once (one synchronisation), are cut into
// batches by
// common/css_batches.h: clusters of >= 2 points, bucketed by the power of two of their
// rows and chunked within a byte budget, so that padding at most doubles a cluster's
// rows and the workspace stays bounded whatever the spread of the sizes. For each
// batch, every cluster's Householder-centred (n - 1, d) matrix (common/spectrum.h) is
// written, zero padded to the bucket's largest, one batched GEMM forms the Gram
// matrices (Z Z^T, or Z^T Z when taller than wide: zero rows only add zero
// eigenvalues), the batched cuSOLVER eigensolver decomposes them, and per-cluster
// kernels reduce them with the routines the CPU kernels use. Sums run over each
// cluster's members in order and maxima are exact, so results are deterministic.
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <vector>

#include "common/cluster_css_args.h"
#include "common/css_batches.h"
#include "common/spectrum.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/solver.cuh"
#include "cuda/value_checks.cuh"

namespace dse::cuda {
namespace {

// Byte budget of a chunk (common/css_batches.h); a test hook may lower it so that small
// inputs run through several chunks.
std::atomic<int64_t> batch_budget{kCssBatchBudgetBytes};

// The members of every cluster, contiguous in `order` (flat point indices into (P * M, d)).
struct Clusters {
  at::Tensor order;    // (P * M) points sorted by (problem, label); ignored points last in each problem
  at::Tensor start;    // (P * k) first position in `order` of each cluster
  at::Tensor counts;   // (P, k) int64 members
  int64_t P, M, d, k;
  int64_t S;           // basis side of the op's schema: min(M - 1, d)
  CssPlan plan;        // the batches (common/css_batches.h)
  at::Tensor ids;      // plan.order on the device: batch b is ids[begin .. begin + count)
};

Clusters group(const ClusterCssArgs& in, bool backward) {
  const at::Tensor& labels = in.labels;
  const int64_t k = in.k;
  Clusters g;
  g.P = in.P, g.M = in.M, g.d = in.d, g.k = k;
  const at::Tensor problem = at::arange(g.P, labels.options()).unsqueeze(1);
  const at::Tensor key = (problem * (k + 1) + labels.where(labels >= 0, at::full({}, k, labels.options()))).reshape(-1);
  g.order = std::get<1>(at::sort(key, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  // Bin counts by an integer scatter-add (at::bincount reads the largest key on the host).
  at::Tensor bins = at::zeros({g.P * (k + 1)}, labels.options());
  bins.scatter_add_(0, key, at::ones_like(key));
  const at::Tensor starts = at::cumsum(bins, 0) - bins;  // exclusive prefix sums
  g.start = starts.view({g.P, k + 1}).narrow(1, 0, k).contiguous().view({-1});
  g.counts = bins.view({g.P, k + 1}).narrow(1, 0, k).contiguous();
  g.S = in.S;  // min(M - 1, d) >= every batch's side, except with M == 1 (S = 0): no cluster has 2 points
  // The sizes on the host: the caller's (checked against g.counts on the device), else one synchronisation.
  const at::Tensor host_counts = in.sizes.defined() ? in.sizes : g.counts.cpu();
  g.plan = plan_css_batches(host_counts.const_data_ptr<int64_t>(), g.P * k, g.d, batch_budget.load(), backward);
  if (!g.plan.order.empty())
    g.ids = host_to_device(at::tensor(at::ArrayRef<int64_t>(g.plan.order), labels.options().device(at::kCPU)),
                           labels.device());
  return g;
}

// Column sums (c, t) of each cluster, over its members in order.
template <typename scalar_t>
__global__ void cluster_colsum_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ order,
                                      const int64_t* __restrict__ start, const int64_t* __restrict__ counts,
                                      int64_t clusters, int64_t d, double* __restrict__ colsum) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= clusters * d) return;
  const int64_t c = e / d, t = e % d;
  const int64_t* members = order + start[c];
  double acc = 0.0;
  for (int64_t r = 0; r < counts[c]; ++r) acc += static_cast<double>(x[members[r] * d + t]);
  colsum[e] = acc;
}

// Squared norm of every point (its coordinates added in order), one thread per point.
template <typename scalar_t>
__global__ void row_norms_kernel(const scalar_t* __restrict__ x, int64_t points, int64_t d,
                                 double* __restrict__ sq) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= points) return;
  const scalar_t* row = x + e * d;
  double acc = 0.0;
  for (int64_t u = 0; u < d; ++u) acc += static_cast<double>(row[u]) * static_cast<double>(row[u]);
  sq[e] = acc;
}

// max_sq[c] = the largest squared row norm of cluster c's members (0 for an empty
// cluster): one block per cluster, strided partial maxima then a shared-memory tree.
// A maximum does not depend on the order it is taken in: deterministic.
__global__ void cluster_max_kernel(const double* __restrict__ sq, const int64_t* __restrict__ order,
                                   const int64_t* __restrict__ start, const int64_t* __restrict__ counts,
                                   double* __restrict__ max_sq) {
  const int64_t c = blockIdx.x;
  const int64_t* members = order + start[c];
  __shared__ double partial[kThreads];
  double local = 0.0;
  for (int64_t r = threadIdx.x; r < counts[c]; r += blockDim.x) local = fmax(local, sq[members[r]]);
  partial[threadIdx.x] = local;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] = fmax(partial[threadIdx.x], partial[threadIdx.x + stride]);
    __syncthreads();
  }
  if (threadIdx.x == 0) max_sq[c] = partial[0];
}

// z[i, r, t]: the Householder-centred matrix of cluster ids[i], zero beyond its n - 1 rows.
template <typename scalar_t>
__global__ void centred_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ order,
                               const int64_t* __restrict__ start, const int64_t* __restrict__ counts,
                               const double* __restrict__ colsum, const int64_t* __restrict__ ids, int64_t count,
                               int64_t rows, int64_t d, double* __restrict__ z) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= count * rows * d) return;
  const int64_t t = e % d, r = (e / d) % rows, c = ids[e / (d * rows)];
  const int64_t n = counts[c];
  double value = 0.0;
  if (r < n - 1) {  // n >= 2 for every cluster of a batch
    const int64_t* members = order + start[c];
    const HouseholderCentering h = householder_centering(n);
    value = householder_centered(static_cast<double>(x[members[r] * d + t]), colsum[c * d + t],
                                 static_cast<double>(x[members[n - 1] * d + t]), h);
  }
  z[e] = value;
}

// values[ids[i]] = css of that cluster from its Gram eigenvalues (the largest min(n - 1, d) of `side`).
__global__ void css_from_eigs_kernel(const double* __restrict__ eig, const int64_t* __restrict__ counts,
                                     const double* __restrict__ max_sq, const int64_t* __restrict__ ids,
                                     int64_t count, int64_t side, int64_t d, double* __restrict__ values) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const int64_t c = ids[i], n = counts[c];
  const int64_t m = (n - 1) < d ? (n - 1) : d;
  const double noise = centring_noise_floor(n, sqrt(max_sq[c]));
  values[c] = nuclear_norm_from_eigs(eig + i * side + (side - m), m, noise) / css_denominator(n, d);
}

// f[i, :] = grad_c / denominator / sigma for the singular values above the floor, else 0 (c = ids[i]).
__global__ void css_gradient_weights_kernel(const double* __restrict__ eig, const int64_t* __restrict__ counts,
                                            const double* __restrict__ max_sq, const double* __restrict__ grad,
                                            const int64_t* __restrict__ ids, int64_t count, int64_t side, int64_t d,
                                            double* __restrict__ f) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const int64_t c = ids[i], n = counts[c];
  double* fi = f + i * side;
  for (int64_t q = 0; q < side; ++q) fi[q] = 0.0;
  const int64_t m = (n - 1) < d ? (n - 1) : d;
  const double* e = eig + i * side + (side - m);
  const double floor = gram_noise_floor(e, m, centring_noise_floor(n, sqrt(max_sq[c])));
  const double scale = grad[c] / css_denominator(n, d);
  for (int64_t q = 0; q < m; ++q) {
    const double s = singular_from_eig(e[q], floor);
    if (s > 0.0) fi[side - m + q] = scale / s;
  }
}

// Adjoint of the centring: grad_x for the members of cluster ids[i] from y = dL/dZ.
template <typename scalar_t>
__global__ void scatter_centred_kernel(const double* __restrict__ y, const int64_t* __restrict__ order,
                                       const int64_t* __restrict__ start, const int64_t* __restrict__ counts,
                                       const int64_t* __restrict__ ids, int64_t count, int64_t rows, int64_t d,
                                       scalar_t* __restrict__ grad_x) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= count * d) return;
  const int64_t i = e / d, t = e % d, c = ids[i], n = counts[c];
  const int64_t* members = order + start[c];
  const double* yc = y + i * rows * d;
  const HouseholderCentering h = householder_centering(n);
  double total = 0.0;
  for (int64_t r = 0; r + 1 < n; ++r) total += yc[r * d + t];
  const double coef = h.a * h.beta;
  for (int64_t r = 0; r + 1 < n; ++r) grad_x[members[r] * d + t] = static_cast<scalar_t>(yc[r * d + t] - coef * total);
  grad_x[members[n - 1] * d + t] = static_cast<scalar_t>(h.a * total);
}

// The kept bases: cluster ids[i]'s eigenpairs (eig (count, side), vec (count, side, side))
// into the leading side x side block of its (S,) and (S, S) entries of the schema's bases.
__global__ void put_basis_kernel(const double* __restrict__ eig, const double* __restrict__ vec,
                                 const int64_t* __restrict__ ids, int64_t count, int64_t side, int64_t S,
                                 double* __restrict__ basis_eig, double* __restrict__ basis_vec) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= count * side * (side + 1)) return;
  const int64_t i = e / (side * (side + 1)), q = e % (side * (side + 1)), c = ids[i];
  if (q < side * side)
    basis_vec[(c * S + q / side) * S + q % side] = vec[i * side * side + q];
  else
    basis_eig[c * S + (q - side * side)] = eig[i * side + (q - side * side)];
}

// Per-cluster column sums and largest squared row norms, for every cluster.
struct Sums {
  at::Tensor colsum;  // (P * k, d) float64
  at::Tensor max_sq;  // (P * k,) float64
};

Sums cluster_sums(const at::Tensor& x, const Clusters& g) {
  const int64_t clusters = g.P * g.k, points = g.P * g.M;
  const auto dopts = x.options().dtype(at::kDouble);
  Sums out{at::empty({clusters, g.d}, dopts), at::empty({clusters}, dopts)};
  at::Tensor sq = at::empty({points}, dopts);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_css_sums_cuda", [&] {
    cluster_colsum_kernel<scalar_t><<<blocks_for(clusters * g.d), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), g.order.const_data_ptr<int64_t>(), g.start.const_data_ptr<int64_t>(),
        g.counts.const_data_ptr<int64_t>(), clusters, g.d, out.colsum.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    row_norms_kernel<scalar_t><<<blocks_for(points), kThreads, 0, stream>>>(x.const_data_ptr<scalar_t>(), points, g.d,
                                                                           sq.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  cluster_max_kernel<<<static_cast<unsigned int>(clusters), kThreads, 0, stream>>>(
      sq.const_data_ptr<double>(), g.order.const_data_ptr<int64_t>(), g.start.const_data_ptr<int64_t>(),
      g.counts.const_data_ptr<int64_t>(), out.max_sq.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// The ids of batch b (on the device) and its padded centred matrices (count, rows, d).
at::Tensor batch_ids(const Clusters& g, const CssBatch& b) { return g.ids.narrow(0, b.begin, b.count); }

at::Tensor centred_batch(const at::Tensor& x, const Clusters& g, const Sums& sums, const CssBatch& b) {
  at::Tensor z = at::empty({b.count, b.rows, g.d}, x.options().dtype(at::kDouble));
  const at::Tensor ids = batch_ids(g, b);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_css_centre_cuda", [&] {
    centred_kernel<scalar_t><<<blocks_for(z.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), g.order.const_data_ptr<int64_t>(), g.start.const_data_ptr<int64_t>(),
        g.counts.const_data_ptr<int64_t>(), sums.colsum.const_data_ptr<double>(), ids.const_data_ptr<int64_t>(),
        b.count, b.rows, g.d, z.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return z;
}

at::Tensor gram(const at::Tensor& z, const CssBatch& b, int64_t d) {
  const at::Tensor zt = z.transpose(1, 2);
  return (b.rows <= d ? at::bmm(z, zt) : at::bmm(zt, z)).contiguous();
}

}  // namespace

int64_t set_css_batch_budget(int64_t bytes) {
  return batch_budget.exchange(bytes > 0 ? bytes : kCssBatchBudgetBytes);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cluster_css(const at::Tensor& x_in,
                                                                       const at::Tensor& labels_in, int64_t k,
                                                                       bool keep_basis,
                                                                       const std::optional<at::Tensor>& sizes) {
  const ClusterCssArgs in = check_cluster_css_args(x_in, labels_in, k, sizes, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(in.x.device());
  enforce_on_device(in.pending);
  const at::Tensor& x = in.x;
  const Clusters g = group(in, /*backward=*/false);
  const auto dopts = x.options().dtype(at::kDouble);
  at::Tensor values = at::zeros({g.P, k}, dopts);  // clusters of < 2 points: 0
  // The schema's (P, k, S, S) bases, S = min(M - 1, d) >= every batch's side: a cluster's
  // eigenpairs in the leading side x side block (padded to its bucket, like its matrix).
  at::Tensor basis_eig = keep_basis ? at::zeros({g.P, k, g.S}, dopts) : at::empty({0}, dopts);
  at::Tensor basis_vec = keep_basis ? at::zeros({g.P, k, g.S, g.S}, dopts) : at::empty({0}, dopts);
  if (!g.plan.batches.empty()) {
    const Sums sums = cluster_sums(x, g);
    for (const CssBatch& b : g.plan.batches) {
      const at::Tensor ids = batch_ids(g, b);
      auto [eig, vec] = batched_symmetric_eigen(gram(centred_batch(x, g, sums, b), b, g.d), keep_basis);
      css_from_eigs_kernel<<<blocks_for(b.count), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          eig.const_data_ptr<double>(), g.counts.const_data_ptr<int64_t>(), sums.max_sq.const_data_ptr<double>(),
          ids.const_data_ptr<int64_t>(), b.count, b.side, g.d, values.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (keep_basis) {
        put_basis_kernel<<<blocks_for(b.count * b.side * (b.side + 1)), kThreads, 0,
                           at::cuda::getCurrentCUDAStream()>>>(eig.const_data_ptr<double>(),
                                                               vec.const_data_ptr<double>(),
                                                               ids.const_data_ptr<int64_t>(), b.count, b.side, g.S,
                                                               basis_eig.data_ptr<double>(),
                                                               basis_vec.data_ptr<double>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  }
  return {values.to(x.scalar_type()), g.counts, basis_eig, basis_vec};
}

at::Tensor cluster_css_backward(const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& labels_in,
                                int64_t k, const std::optional<at::Tensor>& eigenvalues,
                                const std::optional<at::Tensor>& eigenvectors, const std::optional<at::Tensor>& sizes) {
  const ClusterCssBackwardArgs in = check_cluster_css_backward_args(grad_in, x_in, labels_in, k, eigenvalues,
                                                                    eigenvectors, sizes, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(in.x.device());
  enforce_on_device(in.pending);
  const at::Tensor& x = in.x;
  const Clusters g = group(in, /*backward=*/true);
  at::Tensor grad_x = at::zeros_like(x);  // ignored points and clusters of < 2 points get no gradient
  if (g.plan.batches.empty()) return grad_x;
  const Sums sums = cluster_sums(x, g);
  const at::Tensor& grad = in.grad;
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (const CssBatch& b : g.plan.batches) {
    const at::Tensor ids = batch_ids(g, b);
    const at::Tensor z = centred_batch(x, g, sums, b);
    at::Tensor eig, vec;
    if (in.basis.present()) {  // the forward's kept eigenbases (float64, on x's device): their leading side block
      eig = in.basis.eigenvalues.view({g.P * k, g.S}).index_select(0, ids).narrow(1, 0, b.side).contiguous();
      vec = in.basis.eigenvectors.view({g.P * k, g.S, g.S}).index_select(0, ids).narrow(1, 0, b.side)
                .narrow(2, 0, b.side).contiguous();
    } else {
      std::tie(eig, vec) = batched_symmetric_eigen(gram(z, b, g.d), true);
    }
    at::Tensor f = at::empty({b.count, b.side}, eig.options());
    css_gradient_weights_kernel<<<blocks_for(b.count), kThreads, 0, stream>>>(
        eig.const_data_ptr<double>(), g.counts.const_data_ptr<int64_t>(), sums.max_sq.const_data_ptr<double>(),
        grad.const_data_ptr<double>(), ids.const_data_ptr<int64_t>(), b.count, b.side, g.d, f.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // dL/dZ = U diag(1 / sigma) U^T Z (or Z V diag(1 / sigma) V^T), scaled per cluster.
    const at::Tensor w = at::bmm(vec.transpose(1, 2), vec * f.unsqueeze(-1));
    const at::Tensor y = (b.rows <= g.d ? at::bmm(w, z) : at::bmm(z, w)).contiguous();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_css_backward_cuda", [&] {
      scatter_centred_kernel<scalar_t><<<blocks_for(b.count * g.d), kThreads, 0, stream>>>(
          y.const_data_ptr<double>(), g.order.const_data_ptr<int64_t>(), g.start.const_data_ptr<int64_t>(),
          g.counts.const_data_ptr<int64_t>(), ids.const_data_ptr<int64_t>(), b.count, b.rows, g.d,
          grad_x.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return grad_x;
}

TORCH_LIBRARY_IMPL(dse, CUDA, m) {
  m.impl("cluster_css", &cluster_css);
  m.impl("cluster_css_backward", &cluster_css_backward);
}

}  // namespace dse::cuda
