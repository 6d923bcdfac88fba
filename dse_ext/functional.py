"""The compiled DSE building blocks, ``torch.nn.functional`` style.

Each function validates its input, then calls one batched ``torch.ops.dse`` operator.
Half-precision inputs are computed in float32 and returned as float32; spectral
reductions are computed in float64 internally whatever the input dtype.

The checked boundary is this module (and :func:`dse_ext.dse` above it): here every tensor is
checked for type, shape, device, label range and finiteness (NaN/Inf raise a ``ValueError``
naming the argument and the count of bad values), and seeds for being ints in ``[0, 2**63)``.
The raw ``torch.ops.dse.*`` operators check shapes, dtypes and devices only: for speed they do
not read the data to check finiteness, and NaN/Inf input gives unspecified (NaN or garbage)
output rather than an error. Call them directly only with data you know to be finite.

Gradients: ``centered_singular_sum``, ``effective_rank`` and ``nearest_other_centroid_distance``
are differentiable once; a second-order gradient through them raises (see
:mod:`dse_ext._autograd`).
"""

from __future__ import annotations

import torch

from . import _ops
from ._args import css_args, kmeans_args, nearest_other_args, rank_args


def _require_kernel(x: torch.Tensor) -> None:
    if not _ops.extension_available():
        raise RuntimeError(
            f"dse_ext's compiled operators are not available ({_ops.IMPORT_ERROR}); "
            "reinstall with `pip install --no-build-isolation .` or use dse_ext.reference"
        )
    if not _ops.has_kernel(x.device):
        raise RuntimeError(
            f"dse_ext has no compiled kernels for {x.device.type} tensors in this build "
            f"(CUDA kernels built: {_ops.cuda_built()}); move the tensor to the CPU or use dse_ext.reference"
        )
    _ops.warn_if_unvalidated(x.device)


KEEP_BASIS_BYTES = 64 << 20  # largest eigenbasis the css forward keeps for its backward


def _keep_basis(x: torch.Tensor, num_clusters: int) -> bool:
    """Whether the css forward should keep its Gram eigenbases for the backward.

    Keeping them makes the forward compute eigenvectors (LAPACK) instead of eigenvalues only, and
    saves the backward its Gram products and eigensolves. That pays for clusters of more than
    ~128 points (measured at 24 clusters of 523 × 384: forward +70 ms, backward −167 ms on
    2 cores), not for small ones, whose eigenvalues the forward gets four at a time. Only when a
    gradient will be asked for, and the bases ((P, k, S, S) float64, S = min(M − 1, d)) fit in
    KEEP_BASIS_BYTES.
    """
    if not (torch.is_grad_enabled() and x.requires_grad):
        return False
    P, M, d = x.shape
    S = min(M - 1, d)
    return M / num_clusters > 128 and P * num_clusters * S * S * 8 <= KEEP_BASIS_BYTES


def _keep_rank_basis(x: torch.Tensor, P: int, m: int, d: int) -> bool:
    """The same choice for the effective rank's (P, m, d) matrices (e.g. the pooled M_dim of
    the regularizer, one 12544 × 384 matrix: forward +6 ms, backward −57 ms on 2 cores)."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return False
    S = min(m, d)
    return m > 128 and P * S * S * 8 <= KEEP_BASIS_BYTES


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

    Degenerate problems (same rule in every backend): when every point coincides with a chosen
    centroid (the total D² weight is 0), the next seed is point ``min(floor(u·n), n − 1)`` of the
    uniform draw ``u``, so a problem with fewer distinct points than k gets duplicate centroids;
    an empty cluster keeps its centroid. Which duplicate is drawn may differ between the compiled
    kernels and :mod:`dse_ext.reference` (the compiled seeding measures distances through a GEMM
    whose rounding can leave duplicates a tiny weight); the partition into non-empty clusters
    is the same. :func:`dse_ext.dse` merges clusters whose centroids coincide and ignores empty ones.
    """
    b, counts_t, code = kmeans_args(x, num_clusters, max_iters, tol, init, counts, seed)
    _require_kernel(b.x)
    c, labels, _ = torch.ops.dse.kmeans(b.x, counts_t, num_clusters, max_iters, float(tol), int(seed), code)
    return (c[0], labels[0]) if b.single else (c, labels)


def centered_singular_sum(x, labels, num_clusters: int):
    """Per-cluster centred singular-value sum (css, DESIGN §2).

    For cluster j with member matrix C_j (n_j × d):
    ``(sum of singular values of C_j − mean row) / sqrt(max(n_j − 1, d))``; 0 when n_j < 2.

    Args:
        x: ``(M, d)`` or ``(P, M, d)``.
        labels: ``(M,)`` / ``(P, M)`` integers in ``[0, num_clusters)``; -1 ignores a point.
        num_clusters: k.

    Returns:
        ``(values, counts)``: ``(k,)`` / ``(P, k)`` in x's dtype and the member counts (int64).
    """
    b, labels = css_args(x, labels, num_clusters)
    _require_kernel(b.x)
    values, counts, _, _ = torch.ops.dse.cluster_css(b.x, labels, num_clusters, _keep_basis(b.x, num_clusters))
    return (values[0], counts[0]) if b.single else (values, counts)


def effective_rank(x, index=None):
    """Normalized effective rank of each ``(m, d)`` matrix (not centred).

    ``exp(−Σ p_i log p_i) / min(m, d)`` with ``p_i = σ_i / Σσ``; in (0, 1], 0 for an all-zero matrix.

    Args:
        x: ``(..., m, d)`` matrices; or, with ``index``, a ``(R, d)`` table of rows.
        index: optional ``(..., m)`` integers in ``[0, R)``: matrix ``i`` is ``x[index[i]]``,
            read in place (no gathered copy; e.g. one token per image for the per-position M_dim).

    Returns:
        ``(...)`` in x's dtype.
    """
    x, index = rank_args(x, index)
    _require_kernel(x)
    if index is not None:
        rows = index.reshape(-1, index.shape[-1])
        keep = _keep_rank_basis(x, rows.shape[0], rows.shape[1], x.shape[1])
        return torch.ops.dse.effective_rank(x, rows, keep)[0].reshape(index.shape[:-1])
    flat = x.reshape(-1, x.shape[-2], x.shape[-1])
    keep = _keep_rank_basis(x, *flat.shape)
    return torch.ops.dse.effective_rank(flat, None, keep)[0].reshape(x.shape[:-2])


def nearest_other_centroid_distance(x, centroids, labels, valid=None):
    """Euclidean distance from every point to the nearest centroid other than its own.

    Args:
        x: ``(M, d)`` or ``(P, M, d)``.
        centroids: ``(k, d)`` / ``(P, k, d)``.
        labels: ``(M,)`` / ``(P, M)`` integers in ``[0, k)``; -1 ignores a point.
        valid: optional bool ``(k,)`` / ``(P, k)``: centroids that exist (e.g. non-empty clusters).

    Returns:
        ``(M,)`` / ``(P, M)`` distances; 0 for ignored points and points with no other valid centroid.
    """
    b, c, labels, valid = nearest_other_args(x, centroids, labels, valid)
    _require_kernel(b.x)
    out = torch.ops.dse.nearest_other_centroid_distance(b.x, c, labels, valid)
    return out[0] if b.single else out
