// How the CUDA kernels of cluster_css cut their clusters into batches, and how much
// device memory a batch takes (plain host code, tested on the CPU).
//
// Every cluster of n >= 2 points becomes a Householder-centred (n - 1, d) float64
// matrix, zero padded to the rows of its batch, whose Gram matrix (side = min(rows, d))
// a batched eigensolver decomposes. Padding every cluster to the largest one of the
// whole call (what the kernels did first) costs P * k * (max_n - 1) * d * 8 bytes
// however small the other clusters are. Instead:
//   * Buckets: clusters are ordered by size (largest first, ties by cluster index) and
//     grouped by the power of two of their rows, bit_width(n - 1): rows 1 | 2-3 | 4-7 |
//     8-15 | ... A bucket is padded to its largest member, so padding at most doubles
//     a cluster's rows. A cluster's padded rows (and so the layout of its kept basis)
//     depend only on the cluster sizes, never on the memory budget.
//   * Chunks: a bucket is processed in chunks of consecutive clusters whose workspace
//     (css_batch_bytes) stays within a byte budget (kCssBatchBudgetBytes); a chunk holds
//     at least one cluster, so one cluster larger than the budget is still processed.
//   * Clusters of fewer than 2 points get no matrix (their css is 0).
// The plan is a pure function of the sizes, d and the budget, so the same input gives
// the same batches, and results do not depend on the device's free memory.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

namespace dse {

constexpr int64_t kCssBatchBudgetBytes = int64_t{256} << 20;  // 256 MiB of workspace per chunk

// Bucket of a cluster whose centred matrix has `rows` >= 1 rows: bit_width(rows).
inline int css_bucket(int64_t rows) {
  int b = 0;
  for (uint64_t r = static_cast<uint64_t>(rows); r != 0; r >>= 1) ++b;
  return b;
}

// Device memory (bytes) of one batch of `count` clusters padded to `rows` rows in d
// dimensions, side = min(rows, d): the centred matrices (rows x d), their Gram matrices,
// the eigensolver's copy of them (overwritten by the eigenvectors) and its workspace
// (counted as one more side x side), eigenvalues and per-cluster scalars. The backward
// also holds dL/dZ (rows x d) next to the centred matrices.
inline int64_t css_batch_bytes(int64_t count, int64_t rows, int64_t d, bool backward) {
  const int64_t side = std::min(rows, d);
  const int64_t per_matrix = (backward ? 2 : 1) * rows * d + 3 * side * side + 2 * side + 2;
  return count * per_matrix * static_cast<int64_t>(sizeof(double));
}

// The single padded batch of the first CUDA kernels: all `clusters` clusters (empty and
// singleton ones included) padded to the largest.
inline int64_t css_padded_bytes(const int64_t* sizes, int64_t clusters, int64_t d, bool backward) {
  int64_t largest = 0;
  for (int64_t c = 0; c < clusters; ++c) largest = std::max(largest, sizes[c]);
  return css_batch_bytes(clusters, std::max<int64_t>(1, largest - 1), d, backward);
}

struct CssBatch {
  int64_t begin, count;  // clusters order[begin .. begin + count)
  int64_t rows, side;    // padded rows (the bucket's largest n - 1) and Gram side min(rows, d)
  int64_t bytes;         // css_batch_bytes of this batch
};

struct CssPlan {
  std::vector<int64_t> order;  // the clusters with >= 2 points, largest first (ties: lower index)
  std::vector<CssBatch> batches;
  int64_t peak_bytes = 0;   // the largest batch's workspace: what the kernels hold at once
  int64_t total_bytes = 0;  // all batches together (the bucketed batch without chunks)
};

// sizes[c]: the point count of cluster c (c < clusters).
inline CssPlan plan_css_batches(const int64_t* sizes, int64_t clusters, int64_t d, int64_t budget_bytes,
                                bool backward) {
  CssPlan plan;
  for (int64_t c = 0; c < clusters; ++c)
    if (sizes[c] >= 2) plan.order.push_back(c);
  std::stable_sort(plan.order.begin(), plan.order.end(), [&](int64_t a, int64_t b) { return sizes[a] > sizes[b]; });
  const int64_t n_order = static_cast<int64_t>(plan.order.size());
  int64_t i = 0;
  while (i < n_order) {  // one bucket
    const int64_t rows = sizes[plan.order[i]] - 1;  // the bucket's largest
    const int bucket = css_bucket(rows);
    int64_t end = i;
    while (end < n_order && css_bucket(sizes[plan.order[end]] - 1) == bucket) ++end;
    const int64_t per_matrix = css_batch_bytes(1, rows, d, backward);
    const int64_t per_chunk = std::max<int64_t>(1, budget_bytes / std::max<int64_t>(1, per_matrix));
    for (int64_t begin = i; begin < end; begin += per_chunk) {
      const int64_t count = std::min(per_chunk, end - begin);
      const CssBatch batch{begin, count, rows, std::min(rows, d), css_batch_bytes(count, rows, d, backward)};
      plan.batches.push_back(batch);
      plan.peak_bytes = std::max(plan.peak_bytes, batch.bytes);
      plan.total_bytes += batch.bytes;
    }
    i = end;
  }
  return plan;
}

}  // namespace dse
