"""Autograd formulas of the differentiable operators, computed by compiled backward ops.

``cluster_css``, ``effective_rank`` and ``nearest_other_centroid_distance`` are
differentiable with respect to the points (and, for the distances, the centroids);
``kmeans`` is not (its labels are integers and its centroids are returned detached).
Singular values below the noise floor get no gradient (see csrc/cpu/spectral_backward_cpu.cpp),
so rank-deficient clusters and repeated singular values give finite gradients.
"""

from __future__ import annotations

import torch


def _css_setup(ctx, inputs, output):
    x, labels, k, _keep_basis = inputs
    _, _, eigenvalues, eigenvectors = output  # empty unless the forward kept its Gram eigenbases
    ctx.save_for_backward(x, labels, eigenvalues, eigenvectors)
    ctx.k = k


def _css_backward(ctx, grad_values, grad_counts, grad_eigenvalues, grad_eigenvectors):
    x, labels, eigenvalues, eigenvectors = ctx.saved_tensors
    if grad_values is None or not ctx.needs_input_grad[0]:
        return None, None, None, None
    grad_x = torch.ops.dse.cluster_css_backward(grad_values.contiguous(), x, labels, ctx.k, eigenvalues, eigenvectors)
    return grad_x, None, None, None


def _rank_setup(ctx, inputs, output):
    x, index, _keep_basis = inputs
    _, eigenvalues, eigenvectors = output  # empty unless the forward kept its Gram eigenbases
    ctx.save_for_backward(x, index, eigenvalues, eigenvectors)


def _rank_backward(ctx, grad, grad_eigenvalues, grad_eigenvectors):
    x, index, eigenvalues, eigenvectors = ctx.saved_tensors
    if grad is None or not ctx.needs_input_grad[0]:
        return None, None, None
    return torch.ops.dse.effective_rank_backward(grad.contiguous(), x, index, eigenvalues, eigenvectors), None, None


def _nearest_setup(ctx, inputs, output):
    x, centroids, labels, valid = inputs
    ctx.save_for_backward(x, centroids, labels, valid)


def _nearest_backward(ctx, grad):
    x, centroids, labels, valid = ctx.saved_tensors
    if grad is None or not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
        return None, None, None, None
    gx, gc = torch.ops.dse.nearest_other_centroid_distance_backward(grad.contiguous(), x, centroids, labels, valid)
    return (gx if ctx.needs_input_grad[0] else None), (gc if ctx.needs_input_grad[1] else None), None, None


def register() -> None:
    torch.library.register_autograd("dse::cluster_css", _css_backward, setup_context=_css_setup)
    torch.library.register_autograd("dse::effective_rank", _rank_backward, setup_context=_rank_setup)
    torch.library.register_autograd("dse::nearest_other_centroid_distance", _nearest_backward,
                                    setup_context=_nearest_setup)
