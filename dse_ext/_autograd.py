"""Autograd formulas of the differentiable operators, computed by compiled backward ops.

``cluster_css``, ``effective_rank`` and ``nearest_other_centroid_distance`` are
differentiable with respect to the points (and, for the distances, the centroids);
``kmeans`` is not (its labels are integers and its centroids are returned detached).
Singular values below the noise floor get no gradient (see csrc/cpu/spectral_backward_cpu.cpp),
so rank-deficient clusters and repeated singular values give finite gradients.

Second-order gradients are not supported: the ``*_backward`` ops get an autograd formula that
raises, naming the op. A first-order backward with ``create_graph=True`` still works (e.g. a
gradient penalty on other terms of the loss); only a second-order gradient that actually flows
back through a dse op raises (before, torch returned silent zeros with a warning).
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


class DoubleBackwardError(RuntimeError):
    """A second-order gradient reached a dse op, whose backward is not differentiable."""


def _no_double_backward(forward: str, backward: str):
    def setup_context(ctx, inputs, output):
        pass

    def fail(ctx, *grads):
        raise DoubleBackwardError(
            f"double backward through dse::{forward} is not supported: its gradient (dse::{backward}) is not "
            f"differentiable, so second-order gradients (torch.autograd.grad(..., create_graph=True) then "
            f"backward, gradgradcheck, Hessians) cannot flow through it. First-order gradients work, also with "
            f"create_graph=True; keep the DSE term out of what is differentiated twice (e.g. compute a gradient "
            f"penalty from the other loss terms only)")

    return fail, setup_context


def register() -> None:
    torch.library.register_autograd("dse::cluster_css", _css_backward, setup_context=_css_setup)
    torch.library.register_autograd("dse::effective_rank", _rank_backward, setup_context=_rank_setup)
    torch.library.register_autograd("dse::nearest_other_centroid_distance", _nearest_backward,
                                    setup_context=_nearest_setup)
    for forward in ("cluster_css", "effective_rank", "nearest_other_centroid_distance"):
        backward = f"{forward}_backward"
        fail, setup = _no_double_backward(forward, backward)
        torch.library.register_autograd(f"dse::{backward}", fail, setup_context=setup)
