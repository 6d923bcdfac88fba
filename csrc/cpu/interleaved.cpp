// Interleaved Gram matrices and symmetric eigenvalues and eigenvectors (see interleaved.h).
//
// Written once on a kLanes-wide vector type and compiled twice (portable and
// AVX2+FMA):
//   0. The Gram product, lower triangle only, in kGramBlock x kGramBlock
//      register tiles.
//   1. Householder reduction to tridiagonal form (as LAPACK's dsytd2, lower).
//   2. Implicit QL with Wilkinson shifts on the tridiagonal matrix (EISPACK's
//      tql1; with eigenvectors, tql2, its rotations accumulated, then the
//      reflectors of stage 1 applied back). Off-diagonal entries below
//      eps * ||T|| are treated as zero, which moves no eigenvalue by more than that.
// Each lane is first scaled by its largest entry, so squares cannot overflow.
#include "cpu/interleaved.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

namespace dse::cpu {
namespace {

// may_alias + aligned(8): the vectors live inside plain double arrays.
typedef double vd __attribute__((vector_size(kLanes * 8), aligned(8), may_alias));
typedef long long vm __attribute__((vector_size(kLanes * 8), aligned(8), may_alias));  // lane masks: 0 or -1

constexpr double kEps = 2.220446049250313e-16;
std::atomic<int> max_sweeps{kDefaultMaxSweeps};  // QL sweeps per eigenvalue before a lane is declared failed

#define DSE_INLINE inline __attribute__((always_inline))

DSE_INLINE vd splat(double v) {
  vd r;
  for (int l = 0; l < kLanes; ++l) r[l] = v;
  return r;
}
DSE_INLINE vd select(vm m, vd a, vd b) {  // m ? a : b, lane by lane
  return reinterpret_cast<vd>((m & reinterpret_cast<vm>(a)) | (~m & reinterpret_cast<vm>(b)));
}
DSE_INLINE vd vabs(vd x) {
  vd r;
  for (int l = 0; l < kLanes; ++l) r[l] = std::fabs(x[l]);
  return r;
}
DSE_INLINE vd vsqrt(vd x) {
  vd r;
  for (int l = 0; l < kLanes; ++l) r[l] = __builtin_sqrt(x[l]);
  return r;
}
DSE_INLINE vm isplat(long long v) {
  vm r;
  for (int l = 0; l < kLanes; ++l) r[l] = v;
  return r;
}
DSE_INLINE vm iselect(vm m, vm a, vm b) { return (m & a) | (~m & b); }
DSE_INLINE bool any(vm m) {
  long long acc = 0;
  for (int l = 0; l < kLanes; ++l) acc |= m[l];
  return acc != 0;
}
DSE_INLINE bool all(vm m) {
  long long acc = -1;
  for (int l = 0; l < kLanes; ++l) acc &= m[l];
  return acc != 0;
}

// Stage 1. a: interleaved n x n (lower triangle), n >= 1. Writes the diagonal
// to d[0..n) and the sub-diagonal to e[0..n-1), e[n-1] = 0. work: 2n vectors.
// With taus (n vectors), reflector k (I - tau_k v v^T, v on rows k+1..n-1) is kept:
// v in column k of `a` below the diagonal, tau_k in taus[k] (taus[n-2..n) = 0).
DSE_INLINE void tridiagonalize(vd* a, int64_t n, vd* d, vd* e, vd* work, vd* taus = nullptr) {
  vd* v = work;
  vd* w = work + n;
  for (int64_t k = 0; k + 2 < n; ++k) {
    const int64_t m = n - k - 1;  // entries below the diagonal in column k
    vd norm2 = splat(0.0);
    for (int64_t i = 0; i < m; ++i) {
      const vd x = a[(k + 1 + i) * n + k];
      v[i] = x;
      norm2 += x * x;
    }
    // Reflector I - tau v v^T mapping the column to (alpha, 0, ..., 0).
    vd tau, alpha;
    for (int l = 0; l < kLanes; ++l) {
      const double nrm = __builtin_sqrt(norm2[l]), x0 = v[0][l];
      const double vnorm2 = 2.0 * (norm2[l] + std::fabs(x0) * nrm);  // |x - alpha e1|^2
      if (vnorm2 > 0.0) {
        alpha[l] = x0 >= 0.0 ? -nrm : nrm;
        tau[l] = 2.0 / vnorm2;
        v[0][l] = x0 - alpha[l];
      } else {  // the column is already zero
        alpha[l] = x0;
        tau[l] = 0.0;
      }
    }
    d[k] = a[k * n + k];
    e[k] = alpha;
    if (taus) {  // column k below the diagonal is not read again: it keeps the reflector
      taus[k] = tau;
      for (int64_t i = 0; i < m; ++i) a[(k + 1 + i) * n + k] = v[i];
    }
    // w = tau A22 v, A22 = trailing m x m block (lower triangle stored).
    for (int64_t i = 0; i < m; ++i) w[i] = splat(0.0);
    for (int64_t i = 0; i < m; ++i) {
      const vd* row = a + (k + 1 + i) * n + (k + 1);
      const vd vi = v[i];
      vd acc = row[i] * vi;
      for (int64_t j = 0; j < i; ++j) {
        acc += row[j] * v[j];
        w[j] += row[j] * vi;
      }
      w[i] += acc;
    }
    vd wv = splat(0.0);
    for (int64_t i = 0; i < m; ++i) {
      w[i] *= tau;
      wv += w[i] * v[i];
    }
    const vd half_tau_wv = 0.5 * tau * wv;
    for (int64_t i = 0; i < m; ++i) w[i] -= half_tau_wv * v[i];
    // A22 -= v w^T + w v^T (lower triangle).
    for (int64_t i = 0; i < m; ++i) {
      vd* row = a + (k + 1 + i) * n + (k + 1);
      const vd vi = v[i], wi = w[i];
      for (int64_t j = 0; j <= i; ++j) row[j] -= vi * w[j] + wi * v[j];
    }
  }
  if (n >= 2) {
    d[n - 2] = a[(n - 2) * n + (n - 2)];
    e[n - 2] = a[(n - 1) * n + (n - 2)];
  }
  d[n - 1] = a[(n - 1) * n + (n - 1)];
  e[n - 1] = splat(0.0);
  if (taus)
    for (int64_t k = std::max<int64_t>(0, n - 2); k < n; ++k) taus[k] = splat(0.0);
}

// The rotations of one QL sweep applied to the rows of zt (n x n): rotation i, for i
// from top - 1 down to l, mixes rows i and i + 1 with sine sn[i] and cosine cs[i]:
// row i + 1 <- s row_i + c row_{i+1}, row i <- c row_i - s row_{i+1}. Row i + 1 is final
// once rotation i is done, so each column carries one running value down the sweep:
// one load and one store per entry instead of two of each per rotation.
// W columns at a time: W independent chains through the sweep hide the latency of each
// rotation's multiply and FMA (8 measured faster than 4 on a Zen 4 core with AVX2: the
// chains, not the loads, bound the loop). Every column gets the same operations whatever W.
template <int64_t W>
DSE_INLINE int64_t apply_sweep_columns(vd* zt, int64_t n, int64_t l, int64_t top, const vd* sn, const vd* cs,
                                       int64_t t) {
  for (; t + W <= n; t += W) {
    vd h[W];
    for (int64_t j = 0; j < W; ++j) h[j] = zt[top * n + t + j];
    for (int64_t i = top - 1; i >= l; --i) {
      vd* row = zt + i * n + t;
      const vd sv = sn[i], cv = cs[i];
      for (int64_t j = 0; j < W; ++j) {
        const vd lo = row[j];
        row[n + j] = sv * lo + cv * h[j];
        h[j] = cv * lo - sv * h[j];
      }
    }
    for (int64_t j = 0; j < W; ++j) zt[l * n + t + j] = h[j];
  }
  return t;
}

DSE_INLINE void apply_sweep(vd* zt, int64_t n, int64_t l, int64_t top, const vd* sn, const vd* cs) {
  int64_t t = apply_sweep_columns<8>(zt, n, l, top, sn, cs, 0);
  t = apply_sweep_columns<4>(zt, n, l, top, sn, cs, t);
  t = apply_sweep_columns<1>(zt, n, l, top, sn, cs, t);
}

// Stage 2: eigenvalues of the tridiagonal (d, e) in place in d (unsorted).
// Returns the mask of lanes that did not converge. With zt (n x n, the identity
// on entry) and rot (2n vectors of scratch), every rotation is applied to its rows
// too (EISPACK's tql2; a sweep's rotations at once, apply_sweep): row i ends as the
// eigenvector of d[i] in the tridiagonal's basis. A lane that does not take a step
// gets the identity rotation (s = 0, c = 1), which changes no bit.
DSE_INLINE int ql_eigenvalues(int64_t n, vd* d, vd* e, int sweeps_allowed, vd* zt = nullptr, vd* rot = nullptr) {
  vd norm = splat(0.0);
  for (int64_t i = 0; i < n; ++i) {
    const vd t = vabs(d[i]) + vabs(e[i]);
    for (int q = 0; q < kLanes; ++q) norm[q] = std::max(norm[q], t[q]);
  }
  const vd threshold = kEps * norm;
  const vm none = isplat(0);
  vm failed = none;

  for (int64_t l = 0; l < n; ++l) {
    for (int sweep = 0;; ++sweep) {
      // m: first index >= l whose coupling to m + 1 is negligible (n - 1 if none), per lane.
      vm found = none, m_lane = isplat(n - 1);
      for (int64_t m = l; m + 1 < n; ++m) {
        const vm small = vabs(e[m]) <= threshold;
        m_lane = iselect(small & ~found, isplat(m), m_lane);
        found |= small;
        if (all(found)) break;
      }
      const vm active = (m_lane != isplat(l)) & ~failed;
      if (!any(active)) break;
      if (sweep >= sweeps_allowed) {
        failed |= active;
        break;
      }
      int64_t m_max = l;
      vd dm;
      for (int q = 0; q < kLanes; ++q) {
        if (active[q]) m_max = std::max<int64_t>(m_max, m_lane[q]);
        dm[q] = d[m_lane[q]][q];
      }
      // Wilkinson shift from the leading 2 x 2 block.
      vd g = (d[l + 1] - d[l]) / (2.0 * e[l]);
      vd r = vsqrt(g * g + 1.0);
      vd signed_r;
      for (int q = 0; q < kLanes; ++q) signed_r[q] = g[q] >= 0.0 ? std::fabs(r[q]) : -std::fabs(r[q]);
      g = select(active, dm - d[l] + e[l] / (g + signed_r), g);
      vd s = splat(1.0), c = splat(1.0), p = splat(0.0);
      vm deflated = none;
      for (int64_t i = m_max - 1; i >= l; --i) {
        const vm mask = active & (isplat(i) < m_lane) & ~deflated;
        const vd f = s * e[i], b = c * e[i];
        r = vsqrt(f * f + g * g);
        const vm zero = mask & (r == 0.0);
        const vm go = mask & ~zero;
        if (any(zero)) {  // underflow: split the matrix here and start over
          d[i + 1] = select(zero, d[i + 1] - p, d[i + 1]);
          for (int q = 0; q < kLanes; ++q)
            if (zero[q]) e[m_lane[q]][q] = 0.0;
          deflated |= zero;
        }
        e[i + 1] = select(go, r, e[i + 1]);
        const vd inv = 1.0 / r;
        const vd s_new = f * inv, c_new = g * inv;
        const vd g2 = d[i + 1] - p;
        const vd r2 = (d[i] - g2) * s_new + 2.0 * c_new * b;
        const vd p_new = s_new * r2;
        d[i + 1] = select(go, g2 + p_new, d[i + 1]);
        if (zt) {
          rot[i] = select(go, s_new, splat(0.0));
          rot[n + i] = select(go, c_new, splat(1.0));
        }
        g = select(go, c_new * r2 - b, g);
        s = select(go, s_new, s);
        c = select(go, c_new, c);
        p = select(go, p_new, p);
      }
      if (zt) apply_sweep(zt, n, l, m_max, rot, rot + n);
      const vm finish = active & ~deflated;
      d[l] = select(finish, d[l] - p, d[l]);
      e[l] = select(finish, g, e[l]);
      for (int q = 0; q < kLanes; ++q)
        if (finish[q]) e[m_lane[q]][q] = 0.0;
    }
  }
  int mask = 0;
  for (int q = 0; q < kLanes; ++q)
    if (failed[q]) mask |= 1 << q;
  return mask;
}

// Stage 0. z: interleaved (n, d); g: interleaved (n, n), lower triangle.
DSE_INLINE void gram_body(const vd* z, int64_t n, int64_t d, vd* g) {
  constexpr int64_t B = kGramBlock;
  for (int64_t i0 = 0; i0 < n; i0 += B)
    for (int64_t j0 = 0; j0 <= i0; j0 += B) {
      vd acc[B][B];
      for (int64_t a = 0; a < B; ++a)
        for (int64_t b = 0; b < B; ++b) acc[a][b] = splat(0.0);
      const vd* zi = z + i0 * d;
      const vd* zj = z + j0 * d;
      for (int64_t t = 0; t < d; ++t) {
        vd xi[B], xj[B];
        for (int64_t a = 0; a < B; ++a) xi[a] = zi[a * d + t];
        for (int64_t b = 0; b < B; ++b) xj[b] = zj[b * d + t];
        for (int64_t a = 0; a < B; ++a)
          for (int64_t b = 0; b < B; ++b) acc[a][b] += xi[a] * xj[b];
      }
      for (int64_t a = 0; a < B; ++a)
        for (int64_t b = 0; b < B; ++b)
          if (j0 + b <= i0 + a) g[(i0 + a) * n + (j0 + b)] = acc[a][b];
    }
}

// Divides each lane of the interleaved n x n lower triangle by its largest entry (the QL
// step squares entries) and returns the divisors (1 for an all-zero or non-finite lane).
DSE_INLINE vd scale_lanes(vd* a, int64_t n) {
  vd scale = splat(0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j <= i; ++j) {
      const vd t = vabs(a[i * n + j]);
      for (int q = 0; q < kLanes; ++q) scale[q] = std::max(scale[q], t[q]);
    }
  for (int q = 0; q < kLanes; ++q) scale[q] = scale[q] > 0.0 && std::isfinite(scale[q]) ? scale[q] : 1.0;
  const vd inv = 1.0 / scale;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j <= i; ++j) a[i * n + j] *= inv;
  return scale;
}

DSE_INLINE int eigen_body(double* a_raw, int64_t n, double* eig_raw, double* work_raw, int sweeps_allowed) {
  vd* a = reinterpret_cast<vd*>(a_raw);
  vd* d = reinterpret_cast<vd*>(eig_raw);
  vd* e = reinterpret_cast<vd*>(work_raw);
  vd* scratch = e + n;  // 2n vectors
  const vd scale = scale_lanes(a, n);
  tridiagonalize(a, n, d, e, scratch);
  const int failed = ql_eigenvalues(n, d, e, sweeps_allowed);
  for (int64_t i = 0; i < n; ++i) d[i] *= scale;
  return failed;
}

// Eigenvalues (unsorted, in eig_raw) and eigenvectors (row i of zt_raw, n x n, for
// eigenvalue i) of kLanes interleaved symmetric matrices. work: 7n vectors.
DSE_INLINE int vectors_body(double* a_raw, int64_t n, double* eig_raw, double* zt_raw, double* work_raw,
                            int sweeps_allowed) {
  vd* a = reinterpret_cast<vd*>(a_raw);
  vd* d = reinterpret_cast<vd*>(eig_raw);
  vd* zt = reinterpret_cast<vd*>(zt_raw);
  vd* e = reinterpret_cast<vd*>(work_raw);
  vd* taus = e + n;
  vd* scratch = taus + n;  // 2n vectors, then v (n) for the back-transformation
  vd* rot = scratch + 3 * n;  // 2n: one sweep's rotations
  const vd scale = scale_lanes(a, n);
  tridiagonalize(a, n, d, e, scratch, taus);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t t = 0; t < n; ++t) zt[i * n + t] = splat(i == t ? 1.0 : 0.0);
  const int failed = ql_eigenvalues(n, d, e, sweeps_allowed, zt, rot);
  // Back to the matrix's basis: x = H_0 H_1 ... H_{n-3} y for every eigenvector y (a row of zt).
  vd* v = scratch + 2 * n;
  for (int64_t k = n - 3; k >= 0; --k) {
    const int64_t m = n - k - 1;
    for (int64_t t = 0; t < m; ++t) v[t] = a[(k + 1 + t) * n + k];
    const vd tau = taus[k];
    constexpr int64_t R = 4;  // rows at a time: independent dot products hide the FMA latency
    int64_t i = 0;
    for (; i + R <= n; i += R) {
      vd* row = zt + i * n + k + 1;
      vd dot[R];
      for (int64_t j = 0; j < R; ++j) dot[j] = splat(0.0);
      for (int64_t t = 0; t < m; ++t)
        for (int64_t j = 0; j < R; ++j) dot[j] += v[t] * row[j * n + t];
      for (int64_t j = 0; j < R; ++j) dot[j] *= tau;
      for (int64_t t = 0; t < m; ++t)
        for (int64_t j = 0; j < R; ++j) row[j * n + t] -= dot[j] * v[t];
    }
    for (; i < n; ++i) {
      vd* row = zt + i * n + k + 1;
      vd dot = splat(0.0);
      for (int64_t t = 0; t < m; ++t) dot += v[t] * row[t];
      dot *= tau;
      for (int64_t t = 0; t < m; ++t) row[t] -= dot * v[t];
    }
  }
  for (int64_t i = 0; i < n; ++i) d[i] *= scale;
  return failed;
}

int eigen_portable(double* a, int64_t n, double* eig, double* work, int sweeps) {
  return eigen_body(a, n, eig, work, sweeps);
}
int vectors_portable(double* a, int64_t n, double* eig, double* zt, double* work, int sweeps) {
  return vectors_body(a, n, eig, zt, work, sweeps);
}
void gram_portable(const double* z, int64_t n, int64_t d, double* g) {
  gram_body(reinterpret_cast<const vd*>(z), n, d, reinterpret_cast<vd*>(g));
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DSE_HAVE_AVX2_PATH 1
__attribute__((target("avx2,fma"))) int eigen_avx2(double* a, int64_t n, double* eig, double* work, int sweeps) {
  return eigen_body(a, n, eig, work, sweeps);
}
__attribute__((target("avx2,fma"))) int vectors_avx2(double* a, int64_t n, double* eig, double* zt, double* work,
                                                     int sweeps) {
  return vectors_body(a, n, eig, zt, work, sweeps);
}
__attribute__((target("avx2,fma"))) void gram_avx2(const double* z, int64_t n, int64_t d, double* g) {
  gram_body(reinterpret_cast<const vd*>(z), n, d, reinterpret_cast<vd*>(g));
}
#endif

struct Choice {
  int (*eigen)(double*, int64_t, double*, double*, int);
  int (*vectors)(double*, int64_t, double*, double*, double*, int);
  void (*gram)(const double*, int64_t, int64_t, double*);
  const char* isa;
};

constexpr Choice kPortable{&eigen_portable, &vectors_portable, &gram_portable, "portable"};
#ifdef DSE_HAVE_AVX2_PATH
constexpr Choice kAvx2{&eigen_avx2, &vectors_avx2, &gram_avx2, "avx2"};
#endif

bool avx2_supported() {
#ifdef DSE_HAVE_AVX2_PATH
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

std::atomic<const Choice*>& chosen_slot() {
#ifdef DSE_HAVE_AVX2_PATH
  static std::atomic<const Choice*> slot{avx2_supported() ? &kAvx2 : &kPortable};
#else
  static std::atomic<const Choice*> slot{&kPortable};
#endif
  return slot;
}

const Choice& chosen() { return *chosen_slot().load(std::memory_order_relaxed); }

}  // namespace

int interleaved_eigenvalues(double* a, int64_t n, double* eig, double* work) {
  if (n <= 0) return 0;
  const int failed = chosen().eigen(a, n, eig, work, max_sweeps.load(std::memory_order_relaxed));
  // Ascending order per lane (the QL iteration leaves them unsorted).
  double* lane = work;  // the off-diagonal scratch is no longer needed
  for (int q = 0; q < kLanes; ++q) {
    for (int64_t i = 0; i < n; ++i) lane[i] = eig[i * kLanes + q];
    std::sort(lane, lane + n);
    for (int64_t i = 0; i < n; ++i) eig[i * kLanes + q] = lane[i];
  }
  return failed;
}

int interleaved_eigenvectors(double* a, int64_t n, double* const* eig, double* const* vec, int64_t ldv,
                             double* work) {
  if (n <= 0) return 0;
  double* values = work;                 // n x kLanes
  double* zt = values + n * kLanes;      // n x n x kLanes
  double* inner = zt + n * n * kLanes;   // 7n x kLanes
  const int failed = chosen().vectors(a, n, values, zt, inner, max_sweeps.load(std::memory_order_relaxed));
  std::vector<int64_t> order(n);
  for (int q = 0; q < kLanes; ++q) {
    if (!eig[q] || (failed & (1 << q))) continue;
    // Ascending eigenvalues (the QL iteration leaves them unsorted), ties in index order.
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t x, int64_t y) { return values[x * kLanes + q] < values[y * kLanes + q]; });
    for (int64_t i = 0; i < n; ++i) {
      const int64_t src = order[i];
      eig[q][i] = values[src * kLanes + q];
      for (int64_t t = 0; t < n; ++t) vec[q][i * ldv + t] = zt[(src * n + t) * kLanes + q];
    }
  }
  return failed;
}

void interleaved_gram(const double* z, int64_t n, int64_t d, double* g) {
  if (n > 0) chosen().gram(z, n, d, g);
}

const char* interleaved_isa() { return chosen().isa; }

bool select_interleaved_isa(const std::string& isa) {
  if (isa == "portable") {
    chosen_slot().store(&kPortable);
    return true;
  }
#ifdef DSE_HAVE_AVX2_PATH
  if (isa == "avx2" && avx2_supported()) {
    chosen_slot().store(&kAvx2);
    return true;
  }
#endif
  return false;
}

int set_interleaved_max_sweeps(int sweeps) { return max_sweeps.exchange(sweeps); }

}  // namespace dse::cpu
