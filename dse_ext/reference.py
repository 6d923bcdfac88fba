"""Pure-PyTorch reference of every compiled operator, written for clarity.

Loops over problems and clusters, one SVD per matrix, the same shape as the paper's
released code. It is the fallback when the extension is not built (or has no kernel
for a device) and the oracle of the tests; run it in float64 for exact comparisons.
The function signatures match :mod:`dse_ext.functional`.
"""

from __future__ import annotations

import math

import torch

from ._ops.cluster_css import prepare as css_args
from ._ops.effective_rank import prepare as rank_args
from ._ops.kmeans import prepare as kmeans_args
from ._ops.nearest_other_centroid_distance import prepare as nearest_other_args
from ._rng import uniform01


# k-means ties and rounding follow csrc/common/kmeans_rules.h (the rules the compiled kernels
# share): the blocked cumulative search of the seeding and the update ``sum * (1 / n)``.
_SEED_BLOCK = 256  # kSeedBlock: points per block of the cumulative weights


def _seed_pick(weights: torch.Tensor, u: float) -> int:
    """The point a k-means++ draw ``u`` picks from the sampling ``weights`` (D² or D, float64).

    Cumulative sums in blocks of ``_SEED_BLOCK`` points: sequential within a block, the block
    totals added in block order, ``cum_i = before_b + run_i``; the first point with
    ``cum_i > u · total``, so never a zero-weight point while any weight is positive (rounding
    that leaves none: the last positive one); with all weights 0, ``min(floor(u·n), n − 1)``.
    The sums run on the CPU, where ``torch.cumsum`` adds in order.
    """
    w = weights.detach().to("cpu", torch.float64)
    n = w.numel()
    blocks = -(-n // _SEED_BLOCK)
    padded = torch.zeros(blocks * _SEED_BLOCK, dtype=torch.float64)
    padded[:n] = w  # trailing zeros leave the last block's sums unchanged
    run = torch.cumsum(padded.view(blocks, _SEED_BLOCK), 1)
    after = torch.cumsum(run[:, -1], 0)  # block totals added in order
    total = float(after[-1])
    if not total > 0:
        return min(int(u * n), n - 1)
    before = torch.cat([after.new_zeros(1), after[:-1]])
    cum = (before[:, None] + run).reshape(-1)[:n]
    chosen = int(torch.searchsorted(cum, torch.tensor([u * total], dtype=torch.float64), right=True))
    if chosen >= n:  # u · total rounded up to total
        chosen = int(torch.nonzero(w > 0)[-1])
    return chosen


def _kmeans_plus_plus(x: torch.Tensor, k: int, power: int, seed: int, stream: int) -> torch.Tensor:
    """k-means++ seeding in float64; draws from the shared counter-based RNG."""
    n = x.shape[0]
    xd = x.double()
    first = min(int(uniform01(seed, stream, 0) * n), n - 1)
    centroids = [xd[first]]
    dist2 = ((xd - centroids[0]) ** 2).sum(1)  # exactly 0 at points equal to a chosen centroid
    for j in range(1, k):
        weights = dist2 if power == 2 else dist2.sqrt()
        chosen = _seed_pick(weights, uniform01(seed, stream, j))
        centroids.append(xd[chosen])
        dist2 = torch.minimum(dist2, ((xd - xd[chosen]) ** 2).sum(1))
    return torch.stack(centroids)


def _assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest centroid, ties to the lowest index (argmin returns the first minimum)."""
    dist2 = torch.stack([((x - c) ** 2).sum(1) for c in centroids.to(x.dtype)], dim=1)
    return dist2.argmin(1)


def _kmeans_single(x, k, max_iters, tol, seed, stream, power):
    centroids = _kmeans_plus_plus(x, k, power, seed, stream)
    xd = x.double()
    for _ in range(max_iters):
        labels = _assign(x, centroids)
        new = centroids.clone()
        for j in range(k):
            members = xd[labels == j]
            if len(members) > 0:  # an empty cluster keeps its centroid
                new[j] = members.sum(0) * (1.0 / len(members))  # sum times the reciprocal, as the kernels
        shift = float(torch.linalg.norm(new - centroids))
        centroids = new
        if shift <= tol:
            break
    return centroids.to(x.dtype), _assign(x, centroids)


def kmeans(x, num_clusters: int, *, max_iters: int = 20, tol: float = 1e-4, seed: int = 0,
           init: str = "k-means++", counts=None):
    """Reference of :func:`dse_ext.functional.kmeans` (one problem at a time)."""
    b, counts_t, code = kmeans_args(x, num_clusters, max_iters, tol, init, counts, seed)
    P, M, d = b.x.shape
    power = 2 if code == 0 else 1
    centroids = b.x.new_empty(P, num_clusters, d)
    labels = torch.full((P, M), -1, dtype=torch.long, device=b.x.device)
    for p in range(P):
        n = int(counts_t[p])
        centroids[p], labels[p, :n] = _kmeans_single(b.x[p, :n], num_clusters, max_iters, tol, seed, p, power)
    return (centroids[0], labels[0]) if b.single else (centroids, labels)


def cluster_css(x, labels, num_clusters: int, sizes=None):
    """Reference of :func:`dse_ext.functional.cluster_css` (one SVD per cluster). ``sizes`` (the
    member counts, a planning hint of the compiled op) is accepted and not needed."""
    b, labels = css_args(x, labels, num_clusters)
    P, M, d = b.x.shape
    values = torch.zeros(P, num_clusters, dtype=torch.float64, device=b.x.device)
    counts = torch.zeros(P, num_clusters, dtype=torch.long, device=b.x.device)
    for p in range(P):
        for j in range(num_clusters):
            members = b.x[p][labels[p] == j].double()
            n = members.shape[0]
            counts[p, j] = n
            if n >= 2:
                sv = torch.linalg.svdvals(members - members.mean(0))
                values[p, j] = sv.sum() / math.sqrt(max(n - 1, d))
    values = values.to(b.x.dtype)
    return (values[0], counts[0]) if b.single else (values, counts)


def _effective_rank_single(m: torch.Tensor) -> torch.Tensor:
    sv = torch.linalg.svdvals(m.double())
    total = sv.sum()
    if total <= 0:
        return torch.zeros((), dtype=torch.float64, device=m.device)
    p = sv / total
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum()) / min(m.shape)


def effective_rank(x, index=None):
    """Reference of :func:`dse_ext.functional.effective_rank` (one SVD per matrix)."""
    x, index = rank_args(x, index)
    if index is not None:
        x = x[index]
    flat = x.reshape(-1, x.shape[-2], x.shape[-1])
    out = torch.stack([_effective_rank_single(m) for m in flat])
    return out.to(x.dtype).reshape(x.shape[:-2])


def nearest_other_centroid_distance(x, centroids, labels, valid=None):
    """Reference of :func:`dse_ext.functional.nearest_other_centroid_distance`."""
    b, c, labels, valid = nearest_other_args(x, centroids, labels, valid)
    P, M, _ = b.x.shape
    k = c.shape[1]
    out = torch.zeros(P, M, dtype=b.x.dtype, device=b.x.device)
    for p in range(P):
        xd, cd = b.x[p].double(), c[p].double()
        # vector_norm: on a centroid its gradient is the subgradient 0, as the compiled op's (sqrt gave NaN)
        dist = torch.stack([torch.linalg.vector_norm(xd - cd[j], dim=1) for j in range(k)], dim=1)  # (M, k)
        own = labels[p].clamp(min=0)
        dist.scatter_(1, own[:, None], math.inf)
        if valid is not None:
            dist[:, ~valid[p]] = math.inf
        best = dist.min(1).values
        keep = (labels[p] >= 0) & torch.isfinite(best)
        out[p] = torch.where(keep, best, torch.zeros_like(best)).to(b.x.dtype)
    return out[0] if b.single else out


def centered_singular_sum(x, labels, num_clusters: int):
    """Deprecated name of :func:`cluster_css`."""
    import warnings

    warnings.warn("dse_ext.reference.centered_singular_sum is deprecated: use cluster_css (same arguments)",
                  DeprecationWarning, stacklevel=2)
    return cluster_css(x, labels, num_clusters)
