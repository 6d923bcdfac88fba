"""``dse::nearest_other_centroid_distance``: distance from each point to the nearest centroid
other than its own, and its gradient.

This module is the op's one Python place: argument preparation (shared with the reference
twin, :func:`dse_ext.reference.nearest_other_centroid_distance`), the wrapper, the fake kernels
and the autograd formula. Schema: ``csrc/ops.cpp``; kernels:
``csrc/cpu/nearest_other_centroid_distance_cpu.cpp``,
``csrc/cuda/nearest_other_centroid_distance_cuda.cu``; argument checks of both devices:
``csrc/common/nearest_other_centroid_distance_args.h``.
"""

from __future__ import annotations

import torch

from .._validation import as_float_tensor, check_labels
from ._common import OpSpec, batch_points, register_autograd, require_kernel

SPEC = OpSpec("nearest_other_centroid_distance", backward="nearest_other_centroid_distance_backward")


def prepare(x, centroids, labels, valid):
    """Checked arguments: ``(batched points, centroids (P, k, d), labels (P, M), valid (P, k) or None)``."""
    b = batch_points(x)
    P, M, d = b.x.shape
    centroids = as_float_tensor(centroids, "centroids")
    if centroids.dim() != (2 if b.single else 3):
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


def nearest_other_centroid_distance(x, centroids, labels, valid=None):
    """Euclidean distance from every point to the nearest centroid other than its own.

    Args:
        x: ``(M, d)`` or ``(P, M, d)``.
        centroids: ``(k, d)`` / ``(P, k, d)``.
        labels: ``(M,)`` / ``(P, M)`` integers in ``[0, k)``; -1 ignores a point.
        valid: optional bool ``(k,)`` / ``(P, k)``: centroids that exist (e.g. non-empty clusters).

    Returns:
        ``(M,)`` / ``(P, M)`` distances; 0 for ignored points and points with no other valid
        centroid. Differentiable with respect to ``x`` and ``centroids``.
    """
    b, c, labels, valid = prepare(x, centroids, labels, valid)
    require_kernel(b.x)
    out = unchecked(b.x, c, labels, valid)
    return out[0] if b.single else out


def unchecked(x, centroids, labels, valid=None):
    """:func:`nearest_other_centroid_distance` on ``(P, M, d)``, ``(P, k, d)``, ``(P, M)`` int64
    and ``(P, k)`` bool arguments already checked by the caller: no validation, no host
    synchronisation."""
    return torch.ops.dse.nearest_other_centroid_distance(x, centroids, labels, valid)


def _setup_context(ctx, inputs, output):
    x, centroids, labels, valid = inputs
    ctx.save_for_backward(x, centroids, labels, valid)


def _backward(ctx, grad):
    x, centroids, labels, valid = ctx.saved_tensors
    if grad is None or not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
        return None, None, None, None
    gx, gc = torch.ops.dse.nearest_other_centroid_distance_backward(grad.contiguous(), x, centroids, labels, valid)
    return (gx if ctx.needs_input_grad[0] else None), (gc if ctx.needs_input_grad[1] else None), None, None


def register() -> None:
    @torch.library.register_fake("dse::nearest_other_centroid_distance")
    def _fake(x, centroids, labels, valid):
        return x.new_empty(x.shape[0], x.shape[1])

    @torch.library.register_fake("dse::nearest_other_centroid_distance_backward")
    def _backward_fake(grad, x, centroids, labels, valid):
        return (torch.empty_like(x, memory_format=torch.contiguous_format),
                torch.empty_like(centroids, memory_format=torch.contiguous_format))

    register_autograd(SPEC, _backward, _setup_context)
