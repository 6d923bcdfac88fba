// Spectral reductions on the CPU: per-cluster centred singular-value sums and
// normalized effective ranks.
//
// Singular values come from the eigenvalues of the smaller Gram matrix, in
// float64. Matrices of similar size are padded with zero rows into buckets so
// each bucket is one batched GEMM and one batched symmetric eigensolve; zero
// rows only add zero eigenvalues, which the reductions ignore.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <functional>
#include <map>
#include <vector>

#include "common/checks.h"
#include "common/spectrum.h"
#include "cpu/kernels.h"
#include "cpu/batched_eigen.h"
#include "cpu/lapack.h"

namespace dse::cpu {

at::Tensor gram_eigenvalues(const at::Tensor& a) {
  TORCH_CHECK(a.dim() == 2 && a.scalar_type() == at::kDouble, "gram_eigenvalues expects a float64 matrix");
  at::Tensor g = (a.size(0) <= a.size(1) ? at::mm(a, a.t()) : at::mm(a.t(), a)).contiguous();
  at::Tensor eig = at::empty({g.size(0)}, g.options());
  SymmetricEigenvalues()(g.data_ptr<double>(), g.size(0), std::max<int64_t>(1, g.size(0)), eig.data_ptr<double>());
  return eig;
}

namespace {

constexpr int64_t kRowQuantum = 8;              // bucket rows are rounded up to a multiple of this
constexpr int64_t kMaxInterleavedSide = 128;  // larger Gram matrices go to LAPACK one by one
constexpr int64_t kChunkBytes = 4 << 20;        // float64 rows staged per batched call (cache sized,
                                                // and far below glibc's mmap threshold)

// Eigenvalues of the Gram matrices of many (rows_i, d) float64 matrices.
// fill(i, dst) writes matrix i's rows_i x d entries (row-major) to dst;
// reduce(i, eig, m) receives its m eigenvalues (m = the Gram side: min(rows_i, d)).
//
// Matrices of similar size share a bucket (rows rounded up, zero padded); each
// bucket is cut into chunks that are one batched GEMM and one batched eigensolve.
// Chunks run in parallel, largest first, dealt round-robin to the threads.
void gram_spectra(const std::vector<int64_t>& rows, int64_t d, const std::function<void(int64_t, double*)>& fill,
                  const std::function<void(int64_t, const double*, int64_t)>& reduce) {
  // Matrices with rows <= d use Z Z^T (side = padded rows), taller ones Z^T Z (side d).
  std::map<int64_t, std::vector<int64_t>> buckets;  // padded rows (or -1 for tall) -> matrix ids
  for (int64_t i = 0; i < static_cast<int64_t>(rows.size()); ++i) {
    if (rows[i] <= 0) continue;
    const int64_t key = rows[i] <= d ? std::min(d, (rows[i] + kRowQuantum - 1) / kRowQuantum * kRowQuantum) : -1;
    buckets[key].push_back(i);
  }
  struct Chunk {
    bool tall;
    int64_t rpad;
    std::vector<int64_t> ids;
    double cost;
  };
  std::vector<Chunk> chunks;
  for (auto& [key, ids] : buckets) {
    // Similar sizes side by side, so the interleaved eigensolver's lanes share an order.
    std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) { return rows[a] < rows[b]; });
    int64_t rpad = key;
    if (key < 0)
      for (int64_t i : ids) rpad = std::max(rpad, rows[i]);
    const int64_t side = key < 0 ? d : rpad;
    const int64_t per_chunk = std::max<int64_t>(1, kChunkBytes / (8 * rpad * d));
    for (size_t start = 0; start < ids.size(); start += per_chunk) {
      const size_t stop = std::min(ids.size(), start + per_chunk);
      const double n = static_cast<double>(stop - start);
      chunks.push_back({key < 0, rpad, std::vector<int64_t>(ids.begin() + start, ids.begin() + stop),
                        n * (static_cast<double>(rpad) * side * d + static_cast<double>(side) * side * side)});
    }
  }
  std::sort(chunks.begin(), chunks.end(), [](const Chunk& a, const Chunk& b) { return a.cost > b.cost; });

  // One chunk at a time per thread (BLAS/LAPACK run single-threaded inside the
  // parallel region), with buffers allocated once per thread.
  int64_t z_max = 0, g_max = 0;
  for (const Chunk& ch : chunks) {
    const int64_t nb = ch.ids.size(), side = ch.tall ? d : ch.rpad;
    z_max = std::max(z_max, nb * ch.rpad * d);
    g_max = std::max(g_max, nb * side * side);
  }
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), chunks.size()));
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    at::Tensor z_buf = at::empty({z_max}, opts), g_buf = at::empty({g_max}, opts);
    std::vector<double> eig(d);
    SymmetricEigenvalues eigenvalues;
    const int64_t packed_side = std::min(d, kMaxInterleavedSide);
    std::vector<double> packed(packed_side * packed_side * kLanes), packed_eig(packed_side * kLanes),
        packed_work(interleaved_eigen_workspace(packed_side));
    for (int64_t t = t0; t < t1; ++t)
      for (size_t c = t; c < chunks.size(); c += threads) {
        const Chunk& ch = chunks[c];
        const int64_t nb = ch.ids.size(), rpad = ch.rpad, side = ch.tall ? d : rpad;
        at::Tensor z = z_buf.narrow(0, 0, nb * rpad * d).view({nb, rpad, d});
        double* zp = z.data_ptr<double>();
        for (int64_t b = 0; b < nb; ++b) {
          fill(ch.ids[b], zp + b * rpad * d);
          std::fill(zp + (b * rpad + rows[ch.ids[b]]) * d, zp + (b + 1) * rpad * d, 0.0);
        }
        at::Tensor gram = g_buf.narrow(0, 0, nb * side * side).view({nb, side, side});
        if (ch.tall)
          at::bmm_out(gram, z.transpose(1, 2), z);
        else
          at::bmm_out(gram, z, z.transpose(1, 2));
        // Padding rows only add a zero border to Z Z^T: each matrix's spectrum is
        // that of its leading rows x rows block.
        double* gp = gram.data_ptr<double>();
        int64_t b = 0;
        if (!ch.tall && side <= kMaxInterleavedSide)
          for (; b + 1 < nb; b += kLanes) {  // kLanes matrices at a time (a lone last one goes to LAPACK)
            const int64_t lanes = std::min<int64_t>(kLanes, nb - b);
            int64_t n = 0;
            for (int64_t q = 0; q < lanes; ++q) n = std::max(n, rows[ch.ids[b + q]]);
            std::fill(packed.begin(), packed.begin() + n * n * kLanes, 0.0);
            for (int64_t q = 0; q < lanes; ++q) {
              const double* g = gp + (b + q) * side * side;
              for (int64_t i = 0; i < n; ++i)
                for (int64_t j = 0; j <= i; ++j) packed[(i * n + j) * kLanes + q] = g[i * side + j];
            }
            const int failed = interleaved_eigenvalues(packed.data(), n, packed_eig.data(), packed_work.data());
            for (int64_t q = 0; q < lanes; ++q) {
              const int64_t id = ch.ids[b + q], r = rows[id];
              if (failed & (1 << q)) {  // did not converge: LAPACK on the intact Gram matrix
                eigenvalues(gp + (b + q) * side * side, r, side, eig.data());
              } else {  // the largest r of the n eigenvalues (the rest are the zero border)
                for (int64_t j = 0; j < r; ++j) eig[j] = packed_eig[(n - r + j) * kLanes + q];
              }
              reduce(id, eig.data(), r);
            }
          }
        for (; b < nb; ++b) {
          const int64_t n = ch.tall ? d : rows[ch.ids[b]];
          eigenvalues(gp + b * side * side, n, side, eig.data());
          reduce(ch.ids[b], eig.data(), n);
        }
      }
  });
}

// Groups the points of each problem by label: order[p * M ...] lists point
// indices cluster by cluster; offsets[p * (k + 1) + j] .. [+ j + 1] delimit cluster j.
void group_by_label(const int64_t* labels, int64_t P, int64_t M, int64_t k, std::vector<int64_t>& order,
                    std::vector<int64_t>& offsets) {
  order.assign(P * M, 0);
  offsets.assign(P * (k + 1), 0);
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t* lab = labels + p * M;
      int64_t* off = offsets.data() + p * (k + 1);
      for (int64_t i = 0; i < M; ++i)
        if (lab[i] >= 0) off[lab[i] + 1] += 1;
      for (int64_t j = 0; j < k; ++j) off[j + 1] += off[j];
      std::vector<int64_t> cursor(off, off + k);
      for (int64_t i = 0; i < M; ++i)
        if (lab[i] >= 0) order[p * M + cursor[lab[i]]++] = i;
    }
  });
}

// Writes the Householder-centred (n - 1, d) matrix of the n member rows (common/spectrum.h).
template <typename scalar_t>
void fill_centred(const scalar_t* x, const int64_t* members, int64_t n, int64_t d, double* dst) {
  std::vector<double> colsum(d, 0.0);
  for (int64_t r = 0; r < n; ++r) {
    const scalar_t* row = x + members[r] * d;
    for (int64_t t = 0; t < d; ++t) colsum[t] += static_cast<double>(row[t]);
  }
  const scalar_t* last = x + members[n - 1] * d;
  const HouseholderCentering h = householder_centering(n);
  for (int64_t r = 0; r < n - 1; ++r) {
    const scalar_t* row = x + members[r] * d;
    for (int64_t t = 0; t < d; ++t)
      dst[r * d + t] = householder_centered(static_cast<double>(row[t]), colsum[t], static_cast<double>(last[t]), h);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> cluster_css(const at::Tensor& x_in, const at::Tensor& labels_in, int64_t k) {
  check_points(x_in, "cluster_css");
  check_cpu(x_in, "cluster_css");
  check_labels(labels_in, x_in, "cluster_css");
  TORCH_CHECK(k >= 1, "dse::cluster_css: k must be >= 1, got ", k);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  check_label_range(labels, k, "cluster_css");
  const int64_t P = x.size(0), M = x.size(1), d = x.size(2);

  std::vector<int64_t> order, offsets;
  group_by_label(labels.const_data_ptr<int64_t>(), P, M, k, order, offsets);
  at::Tensor counts = at::empty({P, k}, x.options().dtype(at::kLong));
  int64_t* np = counts.data_ptr<int64_t>();
  std::vector<int64_t> rows(P * k);
  for (int64_t c = 0; c < P * k; ++c) {
    const int64_t p = c / k, j = c % k;
    np[c] = offsets[p * (k + 1) + j + 1] - offsets[p * (k + 1) + j];
    rows[c] = np[c] >= 2 ? np[c] - 1 : 0;  // clusters with fewer than 2 points are skipped
  }

  at::Tensor values = at::zeros({P, k}, x.options().dtype(at::kDouble));
  double* vp = values.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_cluster_css_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    gram_spectra(
        rows, d,
        [&](int64_t c, double* dst) {
          const int64_t p = c / k, j = c % k;
          fill_centred<scalar_t>(xp + p * M * d, order.data() + p * M + offsets[p * (k + 1) + j], np[c], d, dst);
        },
        [&](int64_t c, const double* eig, int64_t m) {
          vp[c] = nuclear_norm_from_eigs(eig, m) / css_denominator(np[c], d);
        });
  });
  return {values.to(x.scalar_type()), counts};
}

at::Tensor effective_rank(const at::Tensor& x) {
  check_points(x, "effective_rank");
  check_cpu(x, "effective_rank");
  const int64_t P = x.size(0), m = x.size(1), d = x.size(2);
  const int64_t s0 = x.stride(0), s1 = x.stride(1), s2 = x.stride(2);  // strided views are read in place
  at::Tensor out = at::empty({P}, x.options().dtype(at::kDouble));
  double* op = out.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dse_effective_rank_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    gram_spectra(
        std::vector<int64_t>(P, m), d,
        [&](int64_t p, double* dst) {
          for (int64_t r = 0; r < m; ++r) {
            const scalar_t* src = xp + p * s0 + r * s1;
            for (int64_t t = 0; t < d; ++t) dst[r * d + t] = static_cast<double>(src[t * s2]);
          }
        },
        [&](int64_t p, const double* eig, int64_t side) {
          op[p] = effective_rank_from_eigs(eig, side, std::min(m, d));
        });
  });
  return out.to(x.scalar_type());
}

TORCH_LIBRARY_IMPL(dse, CPU, m) {
  m.impl("cluster_css", &cluster_css);
  m.impl("effective_rank", &effective_rank);
}

}  // namespace dse::cpu
