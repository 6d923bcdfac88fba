"""``dse::cluster_css``: per-cluster centred singular-value sums, and their gradient.

This module is the op's one Python place: argument preparation (shared with the reference
twin, :func:`dse_ext.reference.cluster_css`), the wrapper, the fake kernels and the autograd
formula. Schema: ``csrc/ops.cpp``; kernels: ``csrc/cpu/cluster_css_cpu.cpp``,
``csrc/cuda/cluster_css_cuda.cu``; argument checks of both devices: ``csrc/common/cluster_css_args.h``.

Singular values below the noise floor get no gradient (the nuclear norm's subgradient that is 0
on the null space), so rank-deficient clusters and repeated singular values give finite gradients.
"""

from __future__ import annotations

import torch

from .._validation import check_labels, check_positive_int
from ._common import OpSpec, batch_points, first_order_only, register_autograd, require_kernel
from ._library import empty_for_overwrite

SPEC = OpSpec("cluster_css", backward="cluster_css_backward")
KEEP_BASIS_BYTES = 64 << 20  # largest eigenbasis the forward keeps for its backward (CPU)
KEEP_BASIS_BYTES_CUDA = 1 << 30  # on a GPU: see keep_basis


def prepare(x, labels, num_clusters):
    """Checked arguments: ``(batched points, labels (P, M) int64)``."""
    b = batch_points(x)
    check_positive_int(num_clusters, "num_clusters")
    P, M, _ = b.x.shape
    shape = (M,) if b.single else (P, M)
    labels = check_labels(labels, shape, num_clusters, b.x.device, "labels", allow_ignore=True)
    return b, labels.reshape(P, M)


def keep_basis(x: torch.Tensor, num_clusters: int) -> bool:
    """Whether the forward should keep its Gram eigenbases for the backward.

    Keeping them makes the forward compute eigenvectors (LAPACK) instead of eigenvalues only, and
    saves the backward its Gram products and eigensolves. That pays for clusters of more than
    ~128 points (measured at 24 clusters of 523 × 384: forward +70 ms, backward −167 ms on
    2 cores), not for small ones, whose eigenvalues the forward gets four at a time. Only when a
    gradient will be asked for, and the bases ((P, k, S, S) float64, S = min(M − 1, d)) fit in
    KEEP_BASIS_BYTES.

    On a GPU they are kept whenever a gradient will be asked for and they fit in
    KEEP_BASIS_BYTES_CUDA: a backward that recomputes them runs the eigensolver again and reads
    its status on the host (a synchronisation the training step would pay), and device memory
    for them is cheap next to the activations of the model.
    """
    if not (torch.is_grad_enabled() and x.requires_grad):
        return False
    P, M, d = x.shape
    S = min(M - 1, d)
    if x.device.type == "cuda":
        return P * num_clusters * S * S * 8 <= KEEP_BASIS_BYTES_CUDA
    return M / num_clusters > 128 and P * num_clusters * S * S * 8 <= KEEP_BASIS_BYTES


def cluster_css(x, labels, num_clusters: int):
    """Per-cluster centred singular-value sum (css).

    For cluster j with member matrix C_j (n_j × d):
    ``(sum of singular values of C_j − mean row) / sqrt(max(n_j − 1, d))``; 0 when n_j < 2.

    Args:
        x: ``(M, d)`` or ``(P, M, d)``.
        labels: ``(M,)`` / ``(P, M)`` integers in ``[0, num_clusters)``; -1 ignores a point.
        num_clusters: k.

    Returns:
        ``(values, counts)``: ``(k,)`` / ``(P, k)`` in x's dtype and the member counts (int64).
        Differentiable with respect to ``x``.
    """
    b, labels = prepare(x, labels, num_clusters)
    require_kernel(b.x)
    values, counts = unchecked(b.x, labels, num_clusters)
    return (values[0], counts[0]) if b.single else (values, counts)


def fused_gradient(x: torch.Tensor, num_clusters: int) -> bool:
    """Whether the forward should compute the values' gradient at once
    (``dse::cluster_css_with_gradient``), on the CPU when a gradient will be asked for and the
    bases are not kept (:func:`keep_basis`: clusters of ~128 points or fewer on average).

    The backward of small clusters redoes the forward's fill, Gram products and eigensolves to
    get eigenvectors; computed once, with vectors, the forward holds the gradient of each
    cluster's value in a tensor like ``x`` and the backward only scales its rows. Values are the
    same bits either way (the same partition of the clusters and the same eigenvalues); the
    gradient is rounded once more (to x's dtype before the scaling).
    """
    return (x.device.type == "cpu" and torch.is_grad_enabled() and x.requires_grad
            and not keep_basis(x, num_clusters))


class _CssWithGradient(torch.autograd.Function):
    """``cluster_css`` whose forward also computes the gradient of every value (see
    :func:`fused_gradient`); the backward scales each member row by its cluster's incoming
    gradient. First order only."""

    @staticmethod
    def forward(ctx, x, labels, num_clusters, sizes):
        values, counts, unit = torch.ops.dse.cluster_css_with_gradient(x, labels, num_clusters, sizes)
        ctx.save_for_backward(unit, labels, counts, x)
        ctx.mark_non_differentiable(counts)
        return values, counts

    @staticmethod
    def backward(ctx, grad_values, grad_counts):
        unit, labels, counts, x = ctx.saved_tensors
        if grad_values is None:
            return None, None, None, None
        with torch.no_grad():
            index = labels.clamp(min=0)
            # Rows of ignored points and of clusters under 2 points get 0, as in cluster_css_backward
            # (0 · inf would be NaN for them).
            kept = (labels >= 0) & (counts.gather(1, index) >= 2)
            scale = torch.where(kept, grad_values.to(unit.dtype).gather(1, index), 0)
            out = torch.mul(unit, scale.unsqueeze(-1), out=empty_for_overwrite(unit.shape, unit))
        if torch.is_grad_enabled():  # create_graph=True: a first-order gradient that refuses a second order
            out = _FirstOrderOnly.apply(out, x, grad_values)
        return out, None, None, None


_FirstOrderOnly = first_order_only("dse::cluster_css", "the scaled unit gradient of its forward")


def unchecked(x, labels, num_clusters: int, sizes=None):
    """:func:`cluster_css` on ``(P, M, d)`` points and ``(P, M)`` int64 labels already checked by
    the caller: no validation. ``sizes``: the member counts ``(P, k)`` int64 on the CPU when the
    caller has them; the CUDA kernel then plans its batches without a host synchronisation
    (and its backward too: they are kept for it)."""
    if fused_gradient(x, num_clusters):
        return _CssWithGradient.apply(x, labels, num_clusters, sizes)
    return torch.ops.dse.cluster_css(x, labels, num_clusters, keep_basis(x, num_clusters), sizes)[:2]


def _setup_context(ctx, inputs, output):
    x, labels, k, _keep, sizes = inputs
    _, _, eigenvalues, eigenvectors = output  # empty unless the forward kept its Gram eigenbases
    ctx.save_for_backward(x, labels, eigenvalues, eigenvectors)
    # The kept eigenbases are outputs nobody differentiates: without this, autograd would fill a
    # zero gradient for each (24 × 384 × 384 float64, 28 MB, for the regularizer's global clusters).
    ctx.set_materialize_grads(False)
    ctx.k = k
    ctx.sizes = sizes  # a small CPU tensor or None


def _backward(ctx, grad_values, grad_counts, grad_eigenvalues, grad_eigenvectors):
    x, labels, eigenvalues, eigenvectors = ctx.saved_tensors
    if grad_values is None or not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    grad_x = torch.ops.dse.cluster_css_backward(grad_values.contiguous(), x, labels, ctx.k, eigenvalues, eigenvectors,
                                                ctx.sizes)
    return grad_x, None, None, None, None


def register() -> None:
    @torch.library.register_fake("dse::cluster_css")
    def _fake(x, labels, k, keep_basis=False, sizes=None):
        P, M, d = x.shape
        if keep_basis:
            S = min(M - 1, d)
            eig, vec = x.new_empty(P, k, S, dtype=torch.float64), x.new_empty(P, k, S, S, dtype=torch.float64)
        else:
            eig, vec = x.new_empty(0, dtype=torch.float64), x.new_empty(0, dtype=torch.float64)
        return x.new_empty(P, k), x.new_empty(P, k, dtype=torch.long), eig, vec

    @torch.library.register_fake("dse::cluster_css_with_gradient")
    def _with_gradient_fake(x, labels, k, sizes=None):
        P, M, d = x.shape
        return (x.new_empty(P, k), x.new_empty(P, k, dtype=torch.long),
                torch.empty_like(x, memory_format=torch.contiguous_format))

    @torch.library.register_fake("dse::cluster_css_backward")
    def _backward_fake(grad, x, labels, k, eigenvalues=None, eigenvectors=None, sizes=None):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    register_autograd(SPEC, _backward, _setup_context)
