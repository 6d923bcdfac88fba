"""The Dense representation Structure Estimator, assembled from the batched ops."""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import _ops, functional, reference
from ._rng import derive_seed
from ._validation import as_float_tensor, check_labels, check_ndim, check_positive_int

M_DIM_MODES = ("per_position", "pooled")
BACKENDS = ("auto", "ext", "reference")


class DSEOutput(NamedTuple):
    """DSE and its components; every field is a 0-dim tensor (float32, or float64 for float64 input).

    ``dse`` is the official form ``m_inter - m_intra + m_dim``. The paper form
    ``(m_inter - m_intra) + λ·m_dim`` needs λ from a set of checkpoints.
    """

    dse: torch.Tensor
    m_inter: torch.Tensor
    m_intra: torch.Tensor
    m_intra_image: torch.Tensor
    m_intra_batch: torch.Tensor
    m_dim: torch.Tensor
    avg_l2: torch.Tensor

    def to_dict(self) -> dict[str, float]:
        """The fields as Python floats."""
        return {name: float(value) for name, value in self._asdict().items()}


def _select_backend(backend: str, device: torch.device) -> ModuleType:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return reference
    if _ops.has_kernel(device):
        return functional
    if backend == "ext":
        functional._require_kernel(torch.empty(0, device=device))  # raises with the reason
    warnings.warn(
        f"dse_ext: no compiled kernels for {device.type} tensors; using the (slow) reference backend",
        RuntimeWarning,
        stacklevel=3,
    )
    return reference


def _group(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, d) → (P, G·N, d) groups of consecutive images, zero-padded, and valid-token counts (P,)."""
    B, N, d = x.shape
    P = -(-B // group_size)
    pad = P * group_size - B
    if pad:
        x = torch.cat([x, x.new_zeros(pad, N, d)])
    images = torch.full((P,), group_size, dtype=torch.long)
    images[-1] = B - (P - 1) * group_size
    return x.reshape(P, group_size * N, d), images * N


def _group_labels(labels: torch.Tensor, group_size: int) -> torch.Tensor:
    B, N = labels.shape
    P = -(-B // group_size)
    pad = P * group_size - B
    if pad:
        labels = torch.cat([labels, labels.new_full((pad, N), -1)])
    return labels.reshape(P, group_size * N)


def _segment_means(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-problem cluster means (P, k, d) and which clusters are non-empty (P, k)."""
    P, M, d = x.shape
    keep = labels >= 0
    idx = (labels.clamp(min=0) + k * torch.arange(P, device=x.device)[:, None])[keep]
    sums = torch.zeros(P * k, d, dtype=torch.float64, device=x.device).index_add_(0, idx, x[keep].double())
    counts = torch.zeros(P * k, dtype=torch.float64, device=x.device).index_add_(
        0, idx, torch.ones_like(idx, dtype=torch.float64))
    means = (sums / counts.clamp(min=1)[:, None]).to(x.dtype)
    return means.reshape(P, k, d), (counts > 0).reshape(P, k)


def _mean_distance_to_mean(x: torch.Tensor, block_bytes: int = 1 << 21) -> torch.Tensor:
    """Mean over the B·N tokens of ‖x − x̄‖ (x̄ the mean token), in blocks of images.

    Blocks keep the temporary ``x − x̄`` small: one batch-sized temporary would be a fresh
    allocation on every call, and its page faults cost more than the arithmetic.
    """
    B, N, d = x.shape
    mean = x.mean(dim=(0, 1))
    step = max(1, block_bytes // max(1, N * d * x.element_size()))
    total = sum((xb - mean).norm(dim=-1).sum() for xb in x.split(step))
    return total / (B * N)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum()
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def _check_clusters(k: int, name: str, tokens: int, where: str, minimum: int = 1) -> None:
    check_positive_int(k, name, minimum=minimum)
    if tokens < k:
        raise ValueError(
            f"too few tokens for {name}={k}: {where} has only {tokens} token(s); "
            f"lower {name} or pass more tokens"
        )


def dse(features, *, normalize: bool = True, local_clusters: int = 3, global_clusters: int = 24,
        group_size: int | None = 8, max_iters: int = 20, tol: float = 1e-4, m_dim: str = "per_position",
        seed: int = 0, local_labels=None, global_labels=None, init: str = "k-means++",
        backend: str = "auto") -> DSEOutput:
    """Dense representation Structure Estimator of patch features (DESIGN §2).

    Args:
        features: ``(B, N, d)`` patch tokens (B images ≥ 2, N tokens per image, d channels);
            float16/bfloat16 are computed in float32.
        normalize: L2-normalize every token first.
        local_clusters: k-means clusters per image (k_l).
        global_clusters: k-means clusters per group of images (k_g ≥ 2).
        group_size: images per group for the global clustering (the last group may be smaller);
            ``None``: the whole batch is one group.
        max_iters, tol: k-means stopping rule (see :func:`dse_ext.functional.kmeans`).
        m_dim: ``"per_position"`` (metric form: mean effective rank of N random one-token-per-image
            matrices) or ``"pooled"`` (effective rank of all B·N tokens, the regularizer's form).
        seed: seeds k-means++ and the position permutations; torch's global RNG is untouched.
        local_labels, global_labels: optional ``(B, N)`` integer labels in ``[0, k)`` replacing
            k-means (e.g. segmentation masks); centroids are then the label means.
        init: k-means++ sampling, ``"k-means++"`` (∝ D²) or ``"k-means++-linear"`` (∝ D).
        backend: ``"ext"`` (compiled ops), ``"reference"`` (pure PyTorch) or ``"auto"``
            (compiled when available for the device).

    Returns:
        :class:`DSEOutput` of 0-dim tensors. Distances are divided by ``avg_l2`` (mean distance
        of a token to the batch mean), so every component is scale-free.

    Differentiable with respect to ``features`` (the regularizer's use, see
    :class:`dse_ext.DSERegularizer`): gradients flow through the normalization, ``avg_l2``, the
    css, the effective ranks and the distances; the clustering (k-means or the given labels) and
    the centroids are constants.
    """
    x = as_float_tensor(features, "features", check_finite=False)  # checked through avg_l2 below
    check_ndim(x, (3,), "features", "(B, N, d)")
    B, N, d = x.shape
    if B < 2:
        raise ValueError(f"DSE needs at least 2 images (B >= 2), got B = {B}")
    if group_size is None:
        group_size = B
    check_positive_int(group_size, "group_size")
    if m_dim not in M_DIM_MODES:
        raise ValueError(f"m_dim must be one of {M_DIM_MODES}, got {m_dim!r}")
    _check_clusters(local_clusters, "local_clusters", N, "an image")
    smallest_group = (B - (-(-B // group_size) - 1) * group_size) * N  # the last group's tokens
    _check_clusters(global_clusters, "global_clusters", smallest_group, "a group of images", minimum=2)
    if local_labels is not None:
        local_labels = check_labels(local_labels, (B, N), local_clusters, x.device, "local_labels")
    if global_labels is not None:
        global_labels = check_labels(global_labels, (B, N), global_clusters, x.device, "global_labels")
    ops = _select_backend(backend, x.device)
    x = x.contiguous()  # a view and its copy give bit-identical results

    if normalize:
        x = F.normalize(x, dim=-1)
    avg_l2 = _mean_distance_to_mean(x)
    if not bool(torch.isfinite(avg_l2)):  # any NaN/Inf in the features reaches avg_l2
        as_float_tensor(features, "features")  # raises with the count of bad values
        raise ValueError("features are too large: their norms overflow; rescale them")
    scale = x.norm(dim=-1).mean()
    if not float(avg_l2.detach()) > 16 * torch.finfo(x.dtype).eps * float(scale.detach()):
        raise ValueError("all tokens are identical: DSE is undefined for constant features")
    kmeans_opts = dict(max_iters=max_iters, tol=tol, init=init)

    # Local structure: clusters inside each image.
    if local_labels is None:
        _, local_labels = ops.kmeans(x.detach(), local_clusters, seed=derive_seed(seed, "local"), **kmeans_opts)
    css_local, n_local = ops.centered_singular_sum(x, local_labels, local_clusters)
    ok_local = n_local >= 2
    if not bool(ok_local.any()):
        raise ValueError("no image has a local cluster of >= 2 tokens: M_intra_image is undefined; "
                         "lower local_clusters or pass more tokens per image")
    per_image = _masked_mean(css_local, ok_local, dim=1)
    m_intra_image = _masked_mean(per_image, ok_local.any(dim=1)) / avg_l2

    # Batch structure: clusters over groups of images.
    xg, counts = _group(x, group_size)
    if global_labels is None:
        centroids, labels_g = ops.kmeans(xg.detach(), global_clusters, counts=counts,
                                         seed=derive_seed(seed, "global"), **kmeans_opts)
        present = None
    else:
        labels_g = _group_labels(global_labels, group_size)
        centroids, present = _segment_means(xg.detach(), labels_g, global_clusters)
    css_global, n_global = ops.centered_singular_sum(xg, labels_g, global_clusters)
    if not bool((n_global >= 2).any()):
        raise ValueError("no global cluster has >= 2 tokens: M_intra_batch is undefined; lower global_clusters")
    m_intra_batch = _masked_mean(css_global, n_global >= 2) / avg_l2

    dist = ops.nearest_other_centroid_distance(xg, centroids, labels_g, present)
    per_group = _masked_mean(dist, labels_g >= 0, dim=1)
    ok_group = (n_global > 0).sum(dim=1) >= 2
    if not bool(ok_group.any()):
        raise ValueError("every group has a single non-empty cluster: M_inter is undefined for these labels")
    m_inter = _masked_mean(per_group, ok_group) / avg_l2

    # Dimensionality.
    if m_dim == "per_position":
        gen = torch.Generator().manual_seed(derive_seed(seed, "positions"))
        perm = torch.rand(B, N, generator=gen).argsort(dim=1).to(x.device)  # π_b, one per image
        rows = (perm + N * torch.arange(B, device=x.device)[:, None]).t()  # (N, B): S_n = x[b, π_b(n)]
        m_dim_value = ops.effective_rank(x.reshape(B * N, d), index=rows).mean()
    else:
        m_dim_value = ops.effective_rank(x.reshape(B * N, d))

    m_intra = 0.5 * (m_intra_image + m_intra_batch)
    return DSEOutput(
        dse=m_inter - m_intra + m_dim_value,
        m_inter=m_inter,
        m_intra=m_intra,
        m_intra_image=m_intra_image,
        m_intra_batch=m_intra_batch,
        m_dim=m_dim_value,
        avg_l2=avg_l2,
    )
