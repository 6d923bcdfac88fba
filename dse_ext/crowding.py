"""Crowding diagnostics: how spread out classes are relative to how far apart they lie."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._validation import as_float_tensor


class CrowdingOutput(NamedTuple):
    """Crowding measures; 0-dim tensors in the features' dtype (float32 for half precision)."""

    intra_variance: torch.Tensor  #: pooled within-class variance, mean over samples of ‖x − μ_class‖²
    inter_separation: torch.Tensor  #: mean over pairs of distinct classes of ‖μ_a − μ_b‖²
    ratio: torch.Tensor  #: intra_variance / inter_separation: larger means more crowded

    def to_dict(self) -> dict[str, float]:
        return {name: float(value) for name, value in self._asdict().items()}


def crowding(features, labels) -> CrowdingOutput:
    """Crowding of labelled features (Song et al.): intra-class spread vs inter-class separation.

    Args:
        features: ``(n, D)`` samples, or ``(B, N, d)`` tokens (flattened to ``(B·N, d)``).
        labels: integer class of each sample, shape ``(n,)`` or ``(B, N)``; e.g. ground truth,
            or k-means pseudo-labels (``dse_ext.functional.kmeans``). At least two classes must occur.

    Returns:
        :class:`CrowdingOutput`. Squared Euclidean units of the features; the ratio is scale-free.
        Differentiable with respect to ``features``.
    """
    x = as_float_tensor(features, "features")
    if x.dim() == 3:
        x = x.reshape(-1, x.shape[-1])
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"features must have shape (n, D) or (B, N, d), got {tuple(features.shape)}")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    labels = labels.reshape(-1) if labels.dim() == 2 else labels
    if tuple(labels.shape) != (x.shape[0],):
        raise ValueError(f"labels must hold one class per sample ({x.shape[0]}), got shape {tuple(labels.shape)}")
    if labels.device != x.device:
        raise ValueError(f"labels are on {labels.device} but the features are on {x.device}")
    classes, inverse = torch.unique(labels, return_inverse=True)
    if classes.numel() < 2:
        raise ValueError("crowding needs at least two classes in labels")
    C, D = classes.numel(), x.shape[1]
    counts = torch.bincount(inverse, minlength=C).to(x.dtype)
    means = torch.zeros(C, D, dtype=x.dtype, device=x.device).index_add(0, inverse, x) / counts[:, None]
    intra = ((x - means[inverse]) ** 2).sum(1).mean()
    pair = ((means[:, None] - means[None]) ** 2).sum(-1)
    inter = pair.sum() / (C * (C - 1))
    return CrowdingOutput(intra, inter, intra / inter)
