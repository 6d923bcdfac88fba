// dse::cluster_css and dse::cluster_css_backward on the CPU: per-cluster centred
// singular-value sums and their gradient.
//
// Points are grouped by label (cpu/cluster_rows.h) and every cluster of n >= 2
// points becomes its Householder-centred (n - 1, d) matrix (common/spectrum.h),
// whose singular values are the square roots of the eigenvalues of its smaller Gram
// matrix, in float64. The forward computes eigenvalues only, four matrices at a time
// (cpu/gram_spectra.h); with keep_basis, and in the backward, each cluster's Gram
// matrix is decomposed with its eigenvectors (cpu/singular_gradient.h): in the
// backward, small clusters four at a time by the interleaved solver (cpu/interleaved.h).
// dse::cluster_css_with_gradient does the forward's work with eigenvectors and writes
// each cluster's gradient at once (for a caller that will ask for it), partitioning the
// clusters as the forward does so that its values have the forward's bits.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/cluster_css_args.h"
#include "common/spectrum.h"
#include "cpu/cluster_rows.h"
#include "cpu/output_cache.h"
#include "cpu/gram_spectra.h"
#include "cpu/interleaved.h"
#include "cpu/kernels.h"
#include "cpu/singular_gradient.h"

namespace dse::cpu {
namespace {

// The clusters of every problem: cluster c = p * k + j is label j of problem p.
struct Grouping {
  std::vector<int64_t> order, offsets;  // group_by_label
  int64_t P, M, k;
  explicit Grouping(const ClusterCssArgs& in) : P(in.P), M(in.M), k(in.k) {
    group_by_label(in.labels.const_data_ptr<int64_t>(), in.P, in.M, in.k, order, offsets);
  }
  int64_t size(int64_t c) const {
    const int64_t* off = offsets.data() + (c / k) * (k + 1) + c % k;
    return off[1] - off[0];
  }
  const int64_t* members(int64_t c) const { return order.data() + (c / k) * M + offsets[(c / k) * (k + 1) + c % k]; }
  // Clusters with >= 2 members (and keep(c)), largest first.
  template <typename Keep>
  std::vector<int64_t> largest_first(Keep keep) const {
    std::vector<int64_t> ids;
    for (int64_t c = 0; c < P * k; ++c)
      if (size(c) >= 2 && keep(c)) ids.push_back(c);
    std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) { return size(a) > size(b); });
    return ids;
  }
};

// Largest Gram side whose eigenvectors the backward takes from the interleaved solver. One
// thread, per matrix, with vectors (kLanes at a time against LAPACK dsyevd, 2026-12-06):
// side 66 0.16 ms against 0.44, 132 1.4 against 1.5, 192 5.1 against 2.7, 384 64 against 15
// (the interleaved matrices no longer fit in the caches).
constexpr int64_t kInterleavedVectorsMax = 128;

void sum_of_sigma(const double*, int64_t m, double* h) {
  for (int64_t i = 0; i < m; ++i) h[i] = 1.0;  // d(sum sigma) / d sigma_i
}

// Zeros in the entries of an (S,) eigenvalue block and its (S, S) eigenvector block beyond the
// leading `side` eigenpairs (all of them for side = 0).
void zero_basis_tail(double* eig, double* vec, int64_t side, int64_t S) {
  std::fill(eig + side, eig + S, 0.0);
  for (int64_t i = 0; i < side; ++i) std::fill(vec + i * S + side, vec + (i + 1) * S, 0.0);
  std::fill(vec + side * S, vec + S * S, 0.0);
}

// The Householder-centred matrices of up to kLanes clusters cs (r_max: the largest r = n - 1
// among them), each row-major (z(q)) and interleaved (zi, zero rows up to n3), their
// interleaved Gram matrices (gi), and room for their eigenpairs (eig, vec) and for the
// solvers' workspace, all in s.lanes: what the css backward and the forward with its
// gradient decompose.
struct LaneGroup {
  int64_t n3 = 0, per_lane = 0;
  double *base = nullptr, *zi = nullptr, *gi = nullptr, *work = nullptr, *y = nullptr;
  double* eig[kLanes] = {};
  double* vec[kLanes] = {};
  double noise[kLanes] = {};
  const double* z(int64_t q) const { return base + q * per_lane; }
};

template <typename scalar_t>
LaneGroup fill_lanes(const scalar_t* xp, const Grouping& g, int64_t d, const int64_t* cs, int64_t count,
                     int64_t r_max, Scratch& s) {
  LaneGroup L;
  const int64_t M = g.M, k = g.k, n3 = (r_max + kGramBlock - 1) / kGramBlock * kGramBlock;
  const int64_t work = std::max(interleaved_vectors_workspace(n3), interleaved_eigen_workspace(n3) + n3 * kLanes);
  L.n3 = n3;
  L.per_lane = r_max * d + n3 + n3 * n3;  // centred matrix, eigenvalues, eigenvectors
  s.lanes.resize(kLanes * L.per_lane + n3 * d * kLanes + n3 * n3 * kLanes + work + r_max * d);
  L.base = s.lanes.data();
  L.zi = L.base + kLanes * L.per_lane;  // (n3, d) x kLanes
  L.gi = L.zi + n3 * d * kLanes;        // (n3, n3) x kLanes
  L.work = L.gi + n3 * n3 * kLanes;
  L.y = L.work + work;                  // one cluster's gradient, (r, d)
  for (int64_t q = 0; q < kLanes; ++q) {
    double* zq = L.base + q * L.per_lane;
    const int64_t r = q < count ? g.size(cs[q]) - 1 : 0;
    if (r > 0) {
      L.noise[q] = fill_centred<scalar_t>(xp + (cs[q] / k) * M * d, g.members(cs[q]), r + 1, d, zq, 1);
      for (int64_t i = 0; i < r * d; ++i) L.zi[i * kLanes + q] = zq[i];
      L.eig[q] = zq + r_max * d;
      L.vec[q] = L.eig[q] + n3;
    }
    for (int64_t i = r * d; i < n3 * d; ++i) L.zi[i * kLanes + q] = 0.0;  // zero rows: zero eigenvalues
  }
  interleaved_gram(L.zi, n3, d, L.gi);
  return L;
}

// The tasks of a kernel that solves some clusters one at a time and the others kLanes at a time:
// one_cluster(singles[t], s) for each single cluster first (the costliest), then
// group(first, s) for each group of kLanes consecutive lane clusters, on all threads (for_each_matrix).
template <typename One, typename Group>
void run_singles_then_groups(const std::vector<int64_t>& singles, int64_t n_lanes, const One& one_cluster,
                             const Group& group) {
  const int64_t n_singles = static_cast<int64_t>(singles.size());
  std::vector<int64_t> tasks(n_singles + (n_lanes + kLanes - 1) / kLanes);
  for (size_t t = 0; t < tasks.size(); ++t) tasks[t] = static_cast<int64_t>(t);
  for_each_matrix(tasks, [&](int64_t t, Scratch& s) {
    if (t < n_singles)
      one_cluster(singles[t], s);
    else
      group((t - n_singles) * kLanes, s);
  });
}

// keep_basis: values (P, k) float64, eigenvalues (P, k, S) and eigenvectors (P, k, S, S),
// cluster c's min(n_c - 1, d) eigenpairs in the leading entries, zeros elsewhere (written
// once: the buffers are not zero-filled first).
std::tuple<at::Tensor, at::Tensor, at::Tensor> css_with_basis(const ClusterCssArgs& in, const Grouping& g) {
  const int64_t P = in.P, M = in.M, d = in.d, k = in.k, S = in.S;
  const std::vector<int64_t> ids = g.largest_first([](int64_t) { return true; });
  const auto opts = in.x.options().dtype(at::kDouble);
  at::Tensor values = at::zeros({P, k}, opts), eig = at::empty({P, k, S}, opts), vec = at::empty({P, k, S, S}, opts);
  double* vp = values.data_ptr<double>();
  double* ep = eig.data_ptr<double>();
  double* gp = vec.data_ptr<double>();
  for (int64_t c = 0; c < P * k; ++c)
    if (g.size(c) < 2) zero_basis_tail(ep + c * S, gp + c * S * S, 0, S);  // no cluster: no eigenpairs
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "dse_cluster_css_keep_basis_cpu", [&] {
    const scalar_t* xp = in.x.const_data_ptr<scalar_t>();
    for_each_matrix(ids, [&](int64_t c, Scratch& s) {
      const int64_t p = c / k, n = g.size(c);
      const auto z = uninitialized_doubles((n - 1) * d);
      const double noise = fill_centred<scalar_t>(xp + p * M * d, g.members(c), n, d, z.get(), 1);
      const int64_t side = gram_basis(z.get(), n - 1, d, ep + c * S, gp + c * S * S, S, s.eigen);
      zero_basis_tail(ep + c * S, gp + c * S * S, side, S);
      vp[c] = nuclear_norm_from_eigs(ep + c * S, side, noise) / css_denominator(n, d);
    });
  });
  return {values, eig, vec};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cluster_css(const at::Tensor& x_in,
                                                                       const at::Tensor& labels_in, int64_t k,
                                                                       bool keep_basis,
                                                                       const std::optional<at::Tensor>& sizes) {
  const ClusterCssArgs in = check_cluster_css_args(x_in, labels_in, k, sizes, c10::DeviceType::CPU);
  const int64_t P = in.P, M = in.M, d = in.d;
  const Grouping g(in);
  at::Tensor counts = at::empty({P, k}, in.x.options().dtype(at::kLong));
  int64_t* np = counts.data_ptr<int64_t>();
  std::vector<int64_t> rows(P * k);
  for (int64_t c = 0; c < P * k; ++c) {
    np[c] = g.size(c);
    rows[c] = np[c] >= 2 ? np[c] - 1 : 0;  // clusters with fewer than 2 points are skipped
  }

  if (keep_basis) {
    auto [values, eig, vec] = css_with_basis(in, g);
    return {values.to(in.x.scalar_type()), counts, eig, vec};
  }
  at::Tensor values = at::zeros({P, k}, in.x.options().dtype(at::kDouble));
  std::vector<double> noise(P * k, 0.0);  // each cluster's centring noise floor, set by its fill
  double* vp = values.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "dse_cluster_css_cpu", [&] {
    const scalar_t* xp = in.x.const_data_ptr<scalar_t>();
    gram_spectra(
        rows, d,
        [&](int64_t c, double* dst, int64_t stride) {
          noise[c] = fill_centred<scalar_t>(xp + (c / k) * M * d, g.members(c), np[c], d, dst, stride);
        },
        [&](int64_t c, const double* eig, int64_t m) {
          vp[c] = nuclear_norm_from_eigs(eig, m, noise[c]) / css_denominator(np[c], d);
        });
  });
  const auto empty = in.x.options().dtype(at::kDouble);
  return {values.to(in.x.scalar_type()), counts, at::empty({0}, empty), at::empty({0}, empty)};
}

at::Tensor cluster_css_backward(const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& labels_in,
                                int64_t k, const std::optional<at::Tensor>& eigenvalues,
                                const std::optional<at::Tensor>& eigenvectors, const std::optional<at::Tensor>& sizes) {
  const ClusterCssBackwardArgs in = check_cluster_css_backward_args(grad_in, x_in, labels_in, k, eigenvalues,
                                                                    eigenvectors, sizes, c10::DeviceType::CPU);
  const int64_t M = in.M, d = in.d, S = in.S;
  const double* gp = in.grad.const_data_ptr<double>();
  const bool have_basis = in.basis.present();  // the forward's Gram eigen-decompositions (keep_basis)
  const Grouping g(in);
  // clusters with >= 2 members and a non-zero incoming gradient, largest first
  const std::vector<int64_t> ids = g.largest_first([&](int64_t c) { return gp[c] != 0.0; });

  // Written once: the rows of the clusters in `ids` by their gradient below, the others
  // (ignored points, clusters of < 2 points or with a zero incoming gradient) zeroed here.
  at::Tensor out = empty_filled_output_like(in.x);
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "dse_cluster_css_backward_cpu", [&] {
    const scalar_t* xp = in.x.const_data_ptr<scalar_t>();
    scalar_t* op_out = out.data_ptr<scalar_t>();
    const int64_t* lp = in.labels.const_data_ptr<int64_t>();
    at::parallel_for(0, in.P * M, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t c = (i / M) * k + lp[i];
        if (lp[i] < 0 || g.size(c) < 2 || gp[c] == 0.0) std::fill(op_out + i * d, op_out + (i + 1) * d, scalar_t(0));
      }
    });
    // Clusters of at most d + 1 points without a kept basis (wide Gram matrices) go kLanes at
    // a time through the interleaved Gram product and eigensolver with vectors, the others
    // (and a lone one) one at a time through BLAS and LAPACK. Tasks: the single clusters
    // (the largest, from `ids`), then the groups of kLanes consecutive `lanes` (similar sizes).
    std::vector<int64_t> lanes, singles;
    for (int64_t c : ids)
      if (!have_basis && g.size(c) - 1 <= std::min(d, kInterleavedVectorsMax))
        lanes.push_back(c);
      else
        singles.push_back(c);
    if (lanes.size() == 1) singles.push_back(lanes[0]), lanes.clear();

    auto one_cluster = [&](int64_t c, Scratch& s) {
      const int64_t p = c / k, n = g.size(c);
      const int64_t* members = g.members(c);
      const auto z = uninitialized_doubles((n - 1) * d), y = uninitialized_doubles((n - 1) * d);
      const double noise = fill_centred<scalar_t>(xp + p * M * d, members, n, d, z.get(), 1);
      if (have_basis)
        apply_singular_gradient(z.get(), n - 1, d, in.basis.eigenvalues.const_data_ptr<double>() + c * S,
                                in.basis.eigenvectors.const_data_ptr<double>() + c * S * S, S, sum_of_sigma, y.get(),
                                s, noise);
      else
        singular_gradient(z.get(), n - 1, d, sum_of_sigma, y.get(), s, noise);
      scatter_centred_gradient<scalar_t>(y.get(), members, n, d, gp[c] / css_denominator(n, d), op_out + p * M * d);
    };
    auto group = [&](int64_t first, Scratch& s) {
      const int64_t count = std::min<int64_t>(kLanes, lanes.size() - first);
      const int64_t* cs = lanes.data() + first;  // largest first
      LaneGroup L = fill_lanes<scalar_t>(xp, g, d, cs, count, g.size(cs[0]) - 1, s);
      const int failed = interleaved_eigenvectors(L.gi, L.n3, L.eig, L.vec, L.n3, L.work);
      for (int64_t q = 0; q < count; ++q) {
        const int64_t c = cs[q], n = g.size(c), r = n - 1, n3 = L.n3;
        if (failed & (1 << q))  // the QL iteration did not converge: LAPACK on this matrix
          singular_gradient(L.z(q), r, d, sum_of_sigma, L.y, s, L.noise[q]);
        else  // its r largest eigenpairs (the others belong to the zero rows), vectors cut to r entries
          apply_singular_gradient(L.z(q), r, d, L.eig[q] + (n3 - r), L.vec[q] + (n3 - r) * n3, n3, sum_of_sigma, L.y,
                                  s, L.noise[q]);
        scatter_centred_gradient<scalar_t>(L.y, g.members(c), n, d, gp[c] / css_denominator(n, d),
                                           op_out + (c / k) * M * d);
      }
    };
    run_singles_then_groups(singles, static_cast<int64_t>(lanes.size()), one_cluster, group);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cluster_css_with_gradient(const at::Tensor& x_in,
                                                                          const at::Tensor& labels_in, int64_t k,
                                                                          const std::optional<at::Tensor>& sizes) {
  const ClusterCssArgs in = check_cluster_css_args(x_in, labels_in, k, sizes, c10::DeviceType::CPU,
                                                   "cluster_css_with_gradient");
  const int64_t P = in.P, M = in.M, d = in.d;
  const Grouping g(in);
  at::Tensor counts = at::empty({P, k}, in.x.options().dtype(at::kLong));
  int64_t* np = counts.data_ptr<int64_t>();
  for (int64_t c = 0; c < P * k; ++c) np[c] = g.size(c);
  at::Tensor values = at::zeros({P, k}, in.x.options().dtype(at::kDouble));
  double* vp = values.data_ptr<double>();
  // Written once: the members of clusters of >= 2 points below, every other row zeroed here.
  at::Tensor unit = empty_filled_output_like(in.x);

  // The forward's partition of the clusters (gram_spectra), so that every value has the bits
  // cluster_css gives: clusters of r = n - 1 <= d rows ascending by r, kLanes at a time through
  // the interleaved solver; taller ones, and a lone cluster, one at a time through LAPACK.
  std::vector<int64_t> small, large;
  for (int64_t c = 0; c < P * k; ++c)
    if (np[c] >= 2) (np[c] - 1 <= d ? small : large).push_back(c);
  if (small.size() == 1 && large.empty()) std::swap(small, large);
  std::stable_sort(small.begin(), small.end(), [&](int64_t a, int64_t b) { return np[a] < np[b]; });

  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "dse_cluster_css_with_gradient_cpu", [&] {
    const scalar_t* xp = in.x.const_data_ptr<scalar_t>();
    scalar_t* up = unit.data_ptr<scalar_t>();
    const int64_t* lp = in.labels.const_data_ptr<int64_t>();
    at::parallel_for(0, P * M, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        if (lp[i] < 0 || np[(i / M) * k + lp[i]] < 2) std::fill(up + i * d, up + (i + 1) * d, scalar_t(0));
    });
    auto scatter = [&](int64_t c, const double* y) {
      const int64_t n = np[c];
      scatter_centred_gradient<scalar_t>(y, g.members(c), n, d, 1.0 / css_denominator(n, d), up + (c / k) * M * d);
    };
    // Value through LAPACK's eigenvalues (as the forward) and gradient through its eigenvectors.
    auto lapack = [&](int64_t c, const double* z, double noise, double* y, Scratch& s) {
      const int64_t r = np[c] - 1, side = std::min(r, d);
      s.gram.resize(side * side);
      s.eig.resize(side);
      gram_upper(z, r, d, s.gram.data(), side);
      s.eigen.values(s.gram.data(), side, side, s.eig.data());
      vp[c] = nuclear_norm_from_eigs(s.eig.data(), side, noise) / css_denominator(np[c], d);
      singular_gradient(z, r, d, sum_of_sigma, y, s, noise);
      scatter(c, y);
    };
    auto one_cluster = [&](int64_t c, Scratch& s) {
      const int64_t r = np[c] - 1;
      const auto z = uninitialized_doubles(r * d), y = uninitialized_doubles(r * d);
      const double noise = fill_centred<scalar_t>(xp + (c / k) * M * d, g.members(c), r + 1, d, z.get(), 1);
      lapack(c, z.get(), noise, y.get(), s);
    };
    auto group = [&](int64_t first, Scratch& s) {
      const int64_t count = std::min<int64_t>(kLanes, static_cast<int64_t>(small.size()) - first);
      const int64_t* cs = small.data() + first;  // ascending
      const int64_t r_max = np[cs[count - 1]] - 1;
      LaneGroup L = fill_lanes<scalar_t>(xp, g, d, cs, count, r_max, s);
      const int64_t n3 = L.n3;
      const bool vectors = r_max <= kInterleavedVectorsMax;
      double* values_i = L.work + interleaved_eigen_workspace(n3);  // n3 x kLanes, without vectors
      const int failed = vectors ? interleaved_eigenvectors(L.gi, n3, L.eig, L.vec, n3, L.work)
                                 : interleaved_eigenvalues(L.gi, n3, values_i, L.work);
      for (int64_t q = 0; q < count; ++q) {
        const int64_t c = cs[q], r = np[c] - 1;
        if (failed & (1 << q)) {  // the QL iteration did not converge: LAPACK for both, as the forward
          lapack(c, L.z(q), L.noise[q], L.y, s);
          continue;
        }
        // Its r largest eigenvalues (the others belong to the zero rows): the forward's value.
        const double* eq = vectors ? L.eig[q] + (n3 - r) : L.eig[q];
        if (!vectors)
          for (int64_t j = 0; j < r; ++j) L.eig[q][j] = values_i[(n3 - r + j) * kLanes + q];
        vp[c] = nuclear_norm_from_eigs(eq, r, L.noise[q]) / css_denominator(r + 1, d);
        if (vectors)  // the gradient from the same eigenpairs, vectors cut to r entries
          apply_singular_gradient(L.z(q), r, d, eq, L.vec[q] + (n3 - r) * n3, n3, sum_of_sigma, L.y, s, L.noise[q]);
        else  // large clusters: the gradient through LAPACK
          singular_gradient(L.z(q), r, d, sum_of_sigma, L.y, s, L.noise[q]);
        scatter(c, L.y);
      }
    };
    run_singles_then_groups(large, static_cast<int64_t>(small.size()), one_cluster, group);
  });
  return {values.to(in.x.scalar_type()), counts, unit};
}

TORCH_LIBRARY_IMPL(dse, CPU, m) {
  m.impl("cluster_css", &cluster_css);
  m.impl("cluster_css_with_gradient", &cluster_css_with_gradient);
  m.impl("cluster_css_backward", &cluster_css_backward);
}

}  // namespace dse::cpu
