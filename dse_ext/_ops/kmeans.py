"""``dse::kmeans``: batched k-means with k-means++ seeding (not differentiable).

This module is the op's one Python place: argument preparation (shared with the reference
twin, :func:`dse_ext.reference.kmeans`), the ``torch.nn.functional``-style wrapper and the
fake kernel. Schema: ``csrc/ops.cpp``; kernels: ``csrc/cpu/kmeans_cpu.cpp``,
``csrc/cuda/kmeans_cuda.cu``; argument checks of both devices: ``csrc/common/kmeans_args.h``.
"""

from __future__ import annotations

import torch

from .._validation import check_positive_int, check_seed
from ._common import OpSpec, batch_points, require_kernel

SPEC = OpSpec("kmeans")
INIT_CODES = {"k-means++": 0, "k-means++-linear": 1}


def check_options(max_iters, tol, init) -> None:
    """The stopping rule and the seeding, checked (shared with :func:`dse_ext.dse`)."""
    check_positive_int(max_iters, "max_iters", minimum=0)
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol >= 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    if init not in INIT_CODES:
        raise ValueError(f"init must be one of {sorted(INIT_CODES)}, got {init!r}")


def prepare(x, num_clusters, max_iters, tol, init, counts, seed=0):
    """Checked arguments: ``(batched points, counts (P,) int64 on the CPU, init code)``.

    The counts stay on the CPU: the kernels check them on the host, and the CUDA kernel copies
    them to the GPU without a host synchronisation (a copy from pageable memory would wait)."""
    b = batch_points(x)
    check_seed(seed)
    P, M, _ = b.x.shape
    check_positive_int(num_clusters, "num_clusters")
    check_options(max_iters, tol, init)
    if counts is None:
        counts_t = torch.full((P,), M, dtype=torch.long)
    else:
        counts_t = torch.as_tensor(counts).reshape(-1)
        if counts_t.dtype.is_floating_point or counts_t.shape != (P,):
            raise ValueError(f"counts must hold {P} integer(s), one per problem, got {tuple(counts_t.shape)}")
        counts_t = counts_t.long().cpu()
        if int(counts_t.max()) > M:
            raise ValueError(f"counts must be <= M = {M} (the number of points per problem)")
    low = int(counts_t.min())
    if low < num_clusters:
        raise ValueError(
            f"too few points for {num_clusters} clusters: a problem has {low} point(s); "
            f"lower num_clusters or give more tokens"
        )
    return b, counts_t, INIT_CODES[init]


def kmeans(x, num_clusters: int, *, max_iters: int = 20, tol: float = 1e-4, seed: int = 0,
           init: str = "k-means++", counts=None):
    """Batched k-means with k-means++ seeding.

    Args:
        x: points, ``(M, d)`` or ``(P, M, d)`` for P independent problems.
        num_clusters: k.
        max_iters: maximum number of Lloyd updates per problem.
        tol: a problem stops once the Frobenius norm of its centroid shift is ``<= tol``
            (same units as ``x``).
        seed: seed of the counter-based RNG, an int in ``[0, 2**63)``; the global torch RNG is not used.
        init: ``"k-means++"`` (sample ∝ D², the standard) or ``"k-means++-linear"``
            (sample ∝ D, as the released DSE code does).
        counts: optional ``(P,)`` integers; problem p uses its first ``counts[p]`` points
            and the rest are padding (label -1).

    Returns:
        ``(centroids, labels)``: ``(k, d)`` / ``(P, k, d)`` in x's dtype and
        ``(M,)`` / ``(P, M)`` int64. Labels are the nearest returned centroid, ties to the
        lowest index.

    Degenerate problems (same rule in every backend, see the README's "k-means ties"): a point
    equal to a chosen centroid weighs 0 in the seeding, so it is never drawn while any point
    weighs more; when every weight is 0 (fewer distinct points than k) the next seed is point
    ``min(floor(u·n), n − 1)`` of the uniform draw ``u``, a duplicate centroid, and such
    clusters stay empty (an empty cluster keeps its centroid). :func:`dse_ext.dse` merges
    clusters whose centroids coincide and ignores empty ones.
    """
    b, counts_t, code = prepare(x, num_clusters, max_iters, tol, init, counts, seed)
    require_kernel(b.x)
    c, labels, _ = torch.ops.dse.kmeans(b.x, counts_t, num_clusters, max_iters, float(tol), int(seed), code)
    return (c[0], labels[0]) if b.single else (c, labels)


def unchecked(x, num_clusters: int, *, max_iters: int = 20, tol: float = 1e-4, seed: int = 0,
              init: str = "k-means++", counts=None):
    """:func:`kmeans` on ``(P, M, d)`` points already checked by the caller (``counts``: a
    ``(P,)`` int64 tensor, best on the CPU, or None): no validation, no host synchronisation
    (counts on a GPU are checked there by a device-side assertion, csrc/common/kmeans_args.h)."""
    if counts is None:
        counts = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
    return torch.ops.dse.kmeans(x, counts, num_clusters, max_iters, float(tol), int(seed), INIT_CODES[init])[:2]


def register() -> None:
    @torch.library.register_fake("dse::kmeans")
    def _fake(x, counts, k, max_iters, tol, seed, init):
        P, M, d = x.shape
        return (x.new_empty(P, k, d), x.new_empty(P, M, dtype=torch.long), x.new_empty(P, dtype=torch.long))
