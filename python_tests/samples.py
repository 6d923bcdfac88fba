"""Sample inputs of every compiled op, for every device and dtype: the one table that drives
python_tests/test_op_table.py (parity with the reference, opcheck, gradcheck, determinism, the
global RNG, CUDA against CPU).

``sample_inputs(op, device, dtype)`` returns :class:`Sample` cases: random ones and adversarial
ones (ties, duplicate points, empty and singleton clusters, k = 1 and k = M, labels −1,
huge/tiny scales, non-contiguous and expanded inputs). A sample is built from leaf tensors by
``build(*leaves)``, so gradients can be taken with respect to the leaves even when the op sees a
transposed or expanded view of them. The op list comes from ``dse_ext._ops.OPS``: a new op
without samples fails ``test_every_op_has_samples``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

import dse_ext
from dse_ext._ops import OPS
from dse_ext._ops.cluster_css import prepare as css_prepare
from dse_ext._ops.effective_rank import prepare as rank_prepare
from dse_ext._ops.kmeans import prepare as kmeans_prepare
from dse_ext._ops.nearest_other_centroid_distance import prepare as nearest_prepare

DEVICES = ("cpu", "cuda")
DTYPES = (torch.float32, torch.float64)


def device_available(device: str) -> bool:
    return device == "cpu" or (device == "cuda" and torch.cuda.is_available() and dse_ext.cuda_built())


@dataclass
class Sample:
    """One case: ``args = build(*leaves)`` are the functional-level arguments of the op."""

    name: str
    build: Callable[..., tuple]
    leaves: tuple[torch.Tensor, ...]
    kwargs: dict = field(default_factory=dict)
    smooth: bool = True          # the op is differentiable at this input (gradcheck, gradient parity)
    exact_labels: bool = True    # kmeans: labels equal to the reference's (else: the same partition)

    @property
    def args(self) -> tuple:
        return self.build(*self.leaves)

    def with_grad(self) -> "Sample":
        """The same case with float leaves requiring grad (fresh leaves, same values)."""
        leaves = tuple(t.detach().clone().requires_grad_(t.is_floating_point()) for t in self.leaves)
        return Sample(self.name, self.build, leaves, self.kwargs, self.smooth, self.exact_labels)


def _gen(op: str) -> torch.Generator:
    return torch.Generator().manual_seed(sum(map(ord, op)))


def _clustered(g, P, M, d, k, spread=0.05):
    centres = torch.randn(P, k, d, generator=g, dtype=torch.float64) * 3
    labels = torch.arange(M).remainder(k).repeat(P, 1)
    x = torch.gather(centres, 1, labels[..., None].expand(P, M, d))
    return x + spread * torch.randn(P, M, d, generator=g, dtype=torch.float64)


def _kmeans_samples(g, dtype):
    out = []
    ident = lambda x: (x,)  # noqa: E731
    out.append(Sample("separated", ident, (_clustered(g, 3, 60, 6, 4),), dict(num_clusters=4, seed=3)))
    out.append(Sample("padded_counts", ident, (_clustered(g, 3, 40, 5, 3),),
                      dict(num_clusters=3, counts=torch.tensor([40, 25, 9]), seed=1)))
    out.append(Sample("linear_init", ident, (_clustered(g, 2, 50, 4, 5),),
                      dict(num_clusters=5, init="k-means++-linear", seed=7)))
    out.append(Sample("seeding_only", ident, (_clustered(g, 2, 40, 4, 5),), dict(num_clusters=5, max_iters=0, seed=9)))
    out.append(Sample("k_equals_1", ident, (torch.randn(2, 30, 4, generator=g, dtype=torch.float64),),
                      dict(num_clusters=1)))
    out.append(Sample("k_equals_M", ident, (torch.randn(2, 7, 3, generator=g, dtype=torch.float64),),
                      dict(num_clusters=7)))
    dup = torch.randn(2, 2, 4, generator=g, dtype=torch.float64).repeat_interleave(6, dim=1)  # 2 distinct points
    out.append(Sample("fewer_distinct_points_than_k", ident, (dup,), dict(num_clusters=4), exact_labels=False))
    out.append(Sample("single_problem", ident, (_clustered(g, 1, 40, 3, 2)[0],), dict(num_clusters=2)))
    out.append(Sample("non_contiguous", lambda b: (b.transpose(1, 2),), (_clustered(g, 2, 48, 5, 3).transpose(1, 2)
                                                                        .contiguous(),), dict(num_clusters=3)))
    out.append(Sample("expanded", lambda b: (b.expand(3, -1, -1),), (_clustered(g, 1, 40, 4, 3),),
                      dict(num_clusters=3)))
    out.append(Sample("huge_scale", lambda b: (b * 2.0**40,), (_clustered(g, 2, 40, 4, 3),),
                      dict(num_clusters=3, tol=0.0)))
    out.append(Sample("tiny_scale", lambda b: (b * 2.0**-40,), (_clustered(g, 2, 40, 4, 3),),
                      dict(num_clusters=3, tol=0.0)))
    if dtype == torch.float64:  # random data has near-ties that float32 distance GEMMs may break differently
        out.append(Sample("random", ident, (torch.randn(3, 50, 6, generator=g, dtype=torch.float64),),
                          dict(num_clusters=6, seed=11, max_iters=8)))
    # The tie rules of csrc/common/kmeans_rules.h, on data whose distances and sums are exact in
    # every backend (small integers, dyadic values), so every device must give the same labels.
    grid = torch.stack(torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij"), -1).reshape(1, 25, 2)
    out.append(Sample("equidistant_ties", ident, (torch.cat([grid, grid.flip(1) * 2]).double(),),
                      dict(num_clusters=4, max_iters=0, seed=5)))
    clumps = torch.tensor([[0, 0], [1, 0], [4, 0], [100, 0], [101, 3], [103, 0], [0, 200], [2, 201], [0, 203]],
                          dtype=torch.float64)[None]
    out.append(Sample("update_sum_times_reciprocal", ident, (clumps,), dict(num_clusters=3, seed=2)))
    base = torch.randn(1, 1, 6, generator=g, dtype=torch.float64).float().double()
    others = base + torch.eye(6, dtype=torch.float64)[None, :5] * 0.25 * torch.arange(1, 6)[None, :, None]
    dups = torch.cat([base.expand(1, 30, 6), others], 1)[:, torch.randperm(35, generator=g)]
    out.append(Sample("duplicates_with_alternatives", ident, (dups,), dict(num_clusters=6, max_iters=0, seed=4)))
    dyadic = (torch.tensor([[[0.75, -1.5, 2.0]], [[3.25, 0.5, -0.25]]], dtype=torch.float64)
              .repeat_interleave(8, dim=1).reshape(1, 16, 3))  # 2 distinct points, 8 copies each
    out.append(Sample("fewer_distinct_points_dyadic", ident, (dyadic,), dict(num_clusters=4, max_iters=5, seed=6)))
    # More points than one segment of the centroid sums (kUpdateSegment = 512) and than one block
    # of the seeding's cumulative weights (kSeedBlock = 256): the two-pass update on CUDA.
    out.append(Sample("many_points_segmented_update", ident, (_clustered(g, 1, 1100, 4, 5),),
                      dict(num_clusters=5, seed=8)))
    return out


def _css_samples(g, dtype):
    out = []
    x = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    lab = lambda lo, k, *s: torch.randint(lo, k, s, generator=g)  # noqa: E731
    out.append(Sample("random_with_ignored", lambda a, l: (a, l, 4), (x(3, 24, 5), lab(-1, 4, 3, 24))))
    empty = lab(0, 5, 2, 30)
    empty[empty == 4] = 0  # cluster 4 empty
    empty[0, 3] = 3
    empty[0][empty[0] == 3] = 1
    empty[0, 3] = 3  # cluster 3 of problem 0: a singleton
    out.append(Sample("empty_and_singleton_clusters", lambda a, l: (a, l, 5), (x(2, 30, 4), empty)))
    out.append(Sample("k_equals_1", lambda a, l: (a, l, 1), (x(2, 20, 6), torch.zeros(2, 20, dtype=torch.long))))
    out.append(Sample("k_equals_M", lambda a, l: (a, l, 9), (x(1, 9, 3), torch.arange(9)[None]),
                      smooth=False))  # every cluster a singleton: css is 0 whatever x, no gradient to compare
    all_ignored = lab(0, 3, 2, 16)
    all_ignored[1] = -1
    out.append(Sample("problem_all_ignored", lambda a, l: (a, l, 3), (x(2, 16, 4), all_ignored)))
    rank1 = x(2, 1, 6).repeat(1, 20, 1) * torch.linspace(1, 2, 20, dtype=torch.float64)[None, :, None]
    out.append(Sample("rank_one_clusters", lambda a, l: (a, l, 2), (rank1, lab(0, 2, 2, 20)), smooth=False))
    dup = x(2, 5, 4).repeat(1, 4, 1)
    out.append(Sample("duplicate_points", lambda a, l: (a, l, 3), (dup, lab(0, 3, 2, 20)), smooth=False))
    out.append(Sample("wide_clusters", lambda a, l: (a, l, 2), (x(2, 12, 20), lab(0, 2, 2, 12))))
    out.append(Sample("large_clusters_kept_basis", lambda a, l: (a, l, 2), (x(1, 300, 6), lab(0, 2, 1, 300))))
    # Gram matrices of side > 32 (another eigensolver on CUDA than the small ones)
    out.append(Sample("gram_side_above_32", lambda a, l: (a, l, 2), (x(1, 120, 48), lab(0, 2, 1, 120))))
    out.append(Sample("single_problem", lambda a, l: (a, l, 3), (x(25, 4), lab(-1, 3, 25))))
    out.append(Sample("non_contiguous", lambda a, l: (a.transpose(1, 2), l, 3), (x(2, 5, 22), lab(-1, 3, 2, 22))))
    out.append(Sample("expanded", lambda a, l: (a.expand(3, -1, -1), l, 3), (x(1, 22, 5), lab(-1, 3, 3, 22))))
    out.append(Sample("huge_scale", lambda a, l: (a * 2.0**60, l, 3), (x(2, 20, 4), lab(0, 3, 2, 20))))
    out.append(Sample("tiny_scale", lambda a, l: (a * 2.0**-60, l, 3), (x(2, 20, 4), lab(0, 3, 2, 20))))
    # Clusters of very different sizes: several buckets of the CUDA batches (csrc/common/css_batches.h),
    # Gram sides above and below 32 (both eigensolvers), a singleton and an empty cluster.
    sizes = torch.tensor([70, 40, 25, 9, 3, 2, 1])
    bucketed = torch.repeat_interleave(torch.arange(7), sizes)[torch.randperm(150, generator=g)][None]
    out.append(Sample("buckets_of_sizes", lambda a, l: (a, l, 8), (x(1, 150, 36), bucketed)))
    # Clusters of at most d + 1 points: kLanes at a time through the interleaved eigensolver with
    # vectors in the CPU backward (groups of 4, 4 and 1, padded to their largest member), also at
    # extreme scales.
    sizes = torch.tensor([30, 25, 20, 14, 9, 6, 4, 3, 2])
    wide = torch.repeat_interleave(torch.arange(9), sizes)[torch.randperm(113, generator=g)][None]
    out.append(Sample("wide_groups_of_sizes", lambda a, l: (a, l, 9), (x(1, 113, 40), wide)))
    out.append(Sample("wide_huge_scale", lambda a, l: (a * 2.0**60, l, 3), (x(2, 15, 12), lab(0, 3, 2, 15))))
    out.append(Sample("wide_tiny_scale", lambda a, l: (a * 2.0**-60, l, 3), (x(2, 15, 12), lab(0, 3, 2, 15))))
    return out


def _rank_samples(g, dtype):
    out = []
    x = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    ident = lambda a: (a,)  # noqa: E731
    out.append(Sample("tall", ident, (x(4, 12, 5),)))
    out.append(Sample("wide", ident, (x(3, 5, 14),)))
    out.append(Sample("large_kept_basis", ident, (x(1, 200, 6),)))
    # Tall matrices read 256 rows at a time (3 blocks; a last block shorter than wide; 9 blocks in
    # 8 partial Grams).
    out.append(Sample("streamed_blocks", ident, (x(1, 600, 5),)))
    out.append(Sample("streamed_short_last_block", ident, (x(1, 262, 8),)))
    out.append(Sample("streamed_partial_grams", ident, (x(2, 2100, 2),)))
    out.append(Sample("gram_side_above_32", ident, (x(2, 40, 50),)))  # another eigensolver on CUDA
    out.append(Sample("extra_batch_dims", ident, (x(2, 3, 6, 4),)))
    out.append(Sample("single_matrix", ident, (x(7, 3),)))
    zero = x(3, 6, 4)
    zero[1] = 0
    out.append(Sample("zero_matrix", ident, (zero,), smooth=False))
    rank1 = x(2, 1, 5).repeat(1, 6, 1) * torch.arange(1, 7, dtype=torch.float64)[None, :, None]
    out.append(Sample("rank_one", ident, (rank1,), smooth=False))
    out.append(Sample("duplicate_rows", ident, (x(2, 3, 5).repeat(1, 2, 1),), smooth=False))
    out.append(Sample("row_table_with_index", lambda t, i: (t, i), (x(40, 5), torch.randint(0, 40, (6, 4), generator=g))))
    out.append(Sample("index_repeating_rows", lambda t, i: (t, i), (x(10, 4), torch.tensor([[0, 0, 1], [2, 3, 3]])),
                      smooth=False))
    out.append(Sample("non_contiguous", lambda a: (a.transpose(1, 2),), (x(3, 5, 9),)))
    out.append(Sample("expanded", lambda a: (a.expand(3, -1, -1),), (x(1, 8, 5),)))
    out.append(Sample("huge_scale", lambda a: (a * 2.0**60,), (x(2, 6, 4),)))
    out.append(Sample("tiny_scale", lambda a: (a * 2.0**-60,), (x(2, 6, 4),)))
    return out


def _nearest_samples(g, dtype):
    out = []
    x = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    lab = lambda lo, k, *s: torch.randint(lo, k, s, generator=g)  # noqa: E731
    out.append(Sample("random_with_ignored", lambda a, c, l: (a, c, l), (x(3, 24, 5), x(3, 4, 5), lab(-1, 4, 3, 24))))
    valid = torch.tensor([[True, False, True, True], [False, True, True, False]])
    out.append(Sample("valid_mask", lambda a, c, l, v: (a, c, l, v),
                      (x(2, 20, 3), x(2, 4, 3), lab(-1, 4, 2, 20), valid)))
    out.append(Sample("k_equals_1_no_other", lambda a, c, l: (a, c, l),
                      (x(2, 10, 3), x(2, 1, 3), torch.zeros(2, 10, dtype=torch.long))))
    one_valid = torch.tensor([[True, False, False]])
    out.append(Sample("one_valid_centroid", lambda a, c, l, v: (a, c, l, v),
                      (x(1, 12, 3), x(1, 3, 3), lab(0, 3, 1, 12), one_valid)))
    # Two other centroids at exactly the same distance from every point (mirror images): a tie.
    tie_c = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [-3.0, 0.0]]], dtype=torch.float64)
    tie_x = torch.stack([torch.zeros(8), torch.linspace(-1, 1, 8)], dim=1)[None].double()
    out.append(Sample("tied_other_centroids", lambda a, c, l: (a, c, l),
                      (tie_x, tie_c, torch.zeros(1, 8, dtype=torch.long)), smooth=False))
    coincide = x(2, 3, 4)
    coincide[:, 2] = coincide[:, 1]
    out.append(Sample("coinciding_centroids", lambda a, c, l: (a, c, l), (x(2, 15, 4), coincide, lab(0, 2, 2, 15)),
                      smooth=False))
    out.append(Sample("single_problem", lambda a, c, l: (a, c, l), (x(15, 4), x(3, 4), lab(-1, 3, 15))))
    out.append(Sample("non_contiguous", lambda a, c, l: (a.transpose(1, 2), c, l),
                      (x(2, 4, 18), x(2, 3, 4), lab(-1, 3, 2, 18))))
    out.append(Sample("expanded", lambda a, c, l: (a.expand(3, -1, -1), c.expand(3, -1, -1), l),
                      (x(1, 18, 4), x(1, 3, 4), lab(-1, 3, 3, 18))))
    out.append(Sample("huge_scale", lambda a, c, l: (a * 2.0**60, c * 2.0**60, l), (x(2, 10, 3), x(2, 3, 3),
                                                                                  lab(0, 3, 2, 10))))
    out.append(Sample("tiny_scale", lambda a, c, l: (a * 2.0**-60, c * 2.0**-60, l), (x(2, 10, 3), x(2, 3, 3),
                                                                                    lab(0, 3, 2, 10))))
    # More points than one segment of the centroid gradient's sums (512): the two-pass sum on CUDA.
    out.append(Sample("many_points_segmented_grad", lambda a, c, l: (a, c, l),
                      (x(1, 1100, 3), x(1, 4, 3), lab(-1, 4, 1, 1100))))
    return out


_BUILDERS = {"kmeans": _kmeans_samples, "cluster_css": _css_samples, "effective_rank": _rank_samples,
             "nearest_other_centroid_distance": _nearest_samples}
DIFFERENTIABLE = {spec.name for spec in OPS if spec.backward is not None}


def member_sizes(labels: torch.Tensor, k: int) -> torch.Tensor:
    """The member counts (P, k) int64 of labels (P, M), on the CPU: cluster_css' ``sizes``."""
    labels = labels.cpu()
    return torch.stack([torch.bincount(row[row >= 0], minlength=k) for row in labels])


def sample_inputs(op: str, device: str | torch.device, dtype: torch.dtype) -> list[Sample]:
    """Every sample of ``op``, its float leaves in ``dtype`` on ``device`` (integer ones on ``device``)."""
    samples = _BUILDERS[op](_gen(op), dtype)
    for s in samples:
        s.leaves = tuple(t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype) for t in s.leaves)
        s.kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in s.kwargs.items()}
    return samples


def sample_names(op: str, dtype: torch.dtype = torch.float64) -> list[str]:
    return [s.name for s in _BUILDERS[op](_gen(op), dtype)]


# ---------------------------------------------------------------------------------------------
# Raw op calls: what the functional wrapper passes to torch.ops.dse, forward and backward.


def raw_calls(op: str, args: tuple, kwargs: dict) -> list[tuple[object, tuple]]:
    """``[(torch.ops.dse overload, raw args), ...]`` for ``op``'s forward (and, if differentiable,
    its backward with a fixed upstream gradient), as the functional wrapper calls them."""
    ops = torch.ops.dse
    if op == "kmeans":
        kw = {"max_iters": 20, "tol": 1e-4, "init": "k-means++", "counts": None, "seed": 0, **kwargs}
        b, counts, code = kmeans_prepare(args[0], kw["num_clusters"], kw["max_iters"], kw["tol"], kw["init"],
                                         kw["counts"], kw["seed"])
        return [(ops.kmeans.default, (b.x, counts, kw["num_clusters"], kw["max_iters"], float(kw["tol"]),
                                      kw["seed"], code))]
    g = torch.Generator().manual_seed(5)
    if op == "cluster_css":
        b, labels = css_prepare(*args)
        k = args[2]
        calls = [(ops.cluster_css.default, (b.x, labels, k)), (ops.cluster_css.default, (b.x, labels, k, True))]
        grad = torch.randn(b.x.shape[0], k, generator=g, dtype=b.x.dtype).to(b.x.device)
        _, _, eig, vec = ops.cluster_css(b.x.detach(), labels, k, True)
        calls += [(ops.cluster_css_backward.default, (grad, b.x.detach(), labels, k)),
                  (ops.cluster_css_backward.default, (grad, b.x.detach(), labels, k, eig, vec))]
        # With the member counts given on the CPU (how dse() calls it: no host read on CUDA).
        sizes = member_sizes(labels, k)
        calls += [(ops.cluster_css.default, (b.x, labels, k, True, sizes)),
                  (ops.cluster_css_backward.default, (grad, b.x.detach(), labels, k, eig, vec, sizes))]
        if b.x.device.type == "cpu":  # the forward with its gradient: a CPU kernel only
            calls += [(ops.cluster_css_with_gradient.default, (b.x, labels, k)),
                      (ops.cluster_css_with_gradient.default, (b.x, labels, k, sizes))]
        return calls
    if op == "effective_rank":
        x, index = rank_prepare(*args)
        if index is not None:
            rows = index.reshape(-1, index.shape[-1])
            grad = torch.randn(rows.shape[0], generator=g, dtype=x.dtype).to(x.device)
            return [(ops.effective_rank.default, (x, rows)),
                    (ops.effective_rank_backward.default, (grad, x.detach(), rows))]
        flat = x.reshape(-1, x.shape[-2], x.shape[-1])
        grad = torch.randn(flat.shape[0], generator=g, dtype=x.dtype).to(x.device)
        _, eig, vec = ops.effective_rank(flat.detach(), None, True)
        return [(ops.effective_rank.default, (flat, None, False)), (ops.effective_rank.default, (flat, None, True)),
                (ops.effective_rank_backward.default, (grad, flat.detach(), None)),
                (ops.effective_rank_backward.default, (grad, flat.detach(), None, eig, vec))]
    if op == "nearest_other_centroid_distance":
        b, c, labels, valid = nearest_prepare(*args, *([None] if len(args) == 3 else []))
        grad = torch.randn(*labels.shape, generator=g, dtype=b.x.dtype).to(b.x.device)
        return [(ops.nearest_other_centroid_distance.default, (b.x, c, labels, valid)),
                (ops.nearest_other_centroid_distance_backward.default, (grad, b.x.detach(), c.detach(), labels, valid))]
    raise KeyError(op)
