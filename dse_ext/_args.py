"""Argument preparation shared by the compiled functions and the reference.

Both backends accept the same shapes and reject the same bad input with the same
messages, so the tests can hold one to the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._validation import as_float_tensor, check_labels, check_ndim, check_positive_int, check_seed

INIT_CODES = {"k-means++": 0, "k-means++-linear": 1}


@dataclass
class Batched:
    """Points as a (P, M, d) batch, and whether the caller gave a single (M, d) problem."""

    x: torch.Tensor
    single: bool


def batch_points(x, name: str = "x") -> Batched:
    x = as_float_tensor(x, name)
    check_ndim(x, (2, 3), name, "(M, d) or (P, M, d)")
    single = x.dim() == 2
    return Batched(x.unsqueeze(0) if single else x, single)


def kmeans_args(x, num_clusters, max_iters, tol, init, counts, seed=0):
    """Returns (batched points, counts (P,) int64, init code); ``seed`` is checked (an int in [0, 2**63))."""
    b = batch_points(x)
    check_seed(seed)
    P, M, _ = b.x.shape
    check_positive_int(num_clusters, "num_clusters")
    check_positive_int(max_iters, "max_iters", minimum=0)
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol >= 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    if init not in INIT_CODES:
        raise ValueError(f"init must be one of {sorted(INIT_CODES)}, got {init!r}")
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
    return b, counts_t.to(b.x.device), INIT_CODES[init]


def css_args(x, labels, num_clusters):
    b = batch_points(x)
    check_positive_int(num_clusters, "num_clusters")
    P, M, _ = b.x.shape
    shape = (M,) if b.single else (P, M)
    labels = check_labels(labels, shape, num_clusters, b.x.device, "labels", allow_ignore=True)
    return b, labels.reshape(P, M)


def nearest_other_args(x, centroids, labels, valid):
    b = batch_points(x)
    P, M, d = b.x.shape
    centroids = as_float_tensor(centroids, "centroids")
    if centroids.dim() != b.x.dim():
        raise ValueError(f"centroids must have shape {'(k, d)' if b.single else '(P, k, d)'}, got {tuple(centroids.shape)}")
    c = centroids.unsqueeze(0) if b.single else centroids
    if c.shape[0] != P or c.shape[2] != d:
        raise ValueError(f"centroids must have shape (P={P}, k, d={d}), got {tuple(c.shape)}")
    if c.device != b.x.device:
        raise ValueError(f"centroids are on {c.device} but x is on {b.x.device}")
    k = c.shape[1]
    labels = check_labels(labels, (M,) if b.single else (P, M), k, b.x.device, "labels", allow_ignore=True)
    if valid is not None:
        if not isinstance(valid, torch.Tensor) or valid.shape != ((k,) if b.single else (P, k)):
            raise ValueError(f"valid must be a bool tensor of shape {(k,) if b.single else (P, k)}")
        valid = valid.to(device=b.x.device, dtype=torch.bool).reshape(P, k)
    return b, c.to(b.x.dtype), labels.reshape(P, M), valid


def rank_args(x, index=None):
    """x (..., m, d) → (x, None); or a row table x (R, d) with index (..., m) → (x, index as int64)."""
    x = as_float_tensor(x, "x")
    if index is None:
        if x.dim() < 2:
            raise ValueError(f"x must have shape (..., m, d), got {x.dim()}-D shape {tuple(x.shape)}")
        return x, None
    if x.dim() != 2 or x.numel() == 0:
        raise ValueError(f"with index, x must be a non-empty (rows, d) table, got shape {tuple(x.shape)}")
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"index must be a torch.Tensor, got {type(index).__name__}")
    if index.dim() < 1 or index.numel() == 0:
        raise ValueError(f"index must have shape (..., m) with m >= 1, got {tuple(index.shape)}")
    index = check_labels(index, tuple(index.shape), x.shape[0], x.device, "index")
    return x, index
