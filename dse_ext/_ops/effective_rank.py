"""``dse::effective_rank``: normalized effective rank of a batch of matrices, and its gradient.

This module is the op's one Python place: argument preparation (shared with the reference
twin, :func:`dse_ext.reference.effective_rank`), the wrapper, the fake kernels and the autograd
formula. Schema: ``csrc/ops.cpp``; kernels: ``csrc/cpu/effective_rank_cpu.cpp``,
``csrc/cuda/effective_rank_cuda.cu``; argument checks of both devices:
``csrc/common/effective_rank_args.h``.
"""

from __future__ import annotations

import torch

from .._validation import as_float_tensor, check_labels
from ._common import OpSpec, register_autograd, require_kernel
from .cluster_css import KEEP_BASIS_BYTES, KEEP_BASIS_BYTES_CUDA

SPEC = OpSpec("effective_rank", backward="effective_rank_backward")


def prepare(x, index=None):
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


def keep_basis(x: torch.Tensor, P: int, m: int, d: int) -> bool:
    """Whether the forward should keep its Gram eigenbases for the backward (see
    :func:`dse_ext._ops.cluster_css.keep_basis`; e.g. the pooled M_dim of the regularizer, one
    12544 × 384 matrix: forward +6 ms, backward −57 ms on 2 cores). On a GPU whenever a gradient
    will be asked for and they fit in ``KEEP_BASIS_BYTES_CUDA``, as for the css."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return False
    S = min(m, d)
    if x.device.type == "cuda":
        return P * S * S * 8 <= KEEP_BASIS_BYTES_CUDA
    return m > 128 and P * S * S * 8 <= KEEP_BASIS_BYTES


def effective_rank(x, index=None):
    """Normalized effective rank of each ``(m, d)`` matrix (not centred).

    ``exp(−Σ p_i log p_i) / min(m, d)`` with ``p_i = σ_i / Σσ``; in (0, 1], 0 for an all-zero matrix.

    Args:
        x: ``(..., m, d)`` matrices; or, with ``index``, a ``(R, d)`` table of rows.
        index: optional ``(..., m)`` integers in ``[0, R)``: matrix ``i`` is ``x[index[i]]``,
            read in place (no gathered copy; e.g. one token per image for the per-position M_dim).

    Returns:
        ``(...)`` in x's dtype. Differentiable with respect to ``x``.
    """
    x, index = prepare(x, index)
    require_kernel(x)
    return unchecked(x, index)


def unchecked(x, index=None):
    """:func:`effective_rank` on arguments already checked by the caller: no validation, no host
    synchronisation."""
    if index is not None:
        rows = index.reshape(-1, index.shape[-1])
        keep = keep_basis(x, rows.shape[0], rows.shape[1], x.shape[1])
        return torch.ops.dse.effective_rank(x, rows, keep)[0].reshape(index.shape[:-1])
    flat = x.reshape(-1, x.shape[-2], x.shape[-1])
    keep = keep_basis(x, *flat.shape)
    return torch.ops.dse.effective_rank(flat, None, keep)[0].reshape(x.shape[:-2])


def _setup_context(ctx, inputs, output):
    x, index, _keep = inputs
    _, eigenvalues, eigenvectors = output  # empty unless the forward kept its Gram eigenbases
    ctx.save_for_backward(x, index, eigenvalues, eigenvectors)
    # The kept eigenbases are outputs nobody differentiates: without this, autograd would fill a
    # zero gradient for each (24 × 384 × 384 float64, 28 MB, for the regularizer's global clusters).
    ctx.set_materialize_grads(False)


def _backward(ctx, grad, grad_eigenvalues, grad_eigenvectors):
    x, index, eigenvalues, eigenvectors = ctx.saved_tensors
    if grad is None or not ctx.needs_input_grad[0]:
        return None, None, None
    return torch.ops.dse.effective_rank_backward(grad.contiguous(), x, index, eigenvalues, eigenvectors), None, None


def register() -> None:
    @torch.library.register_fake("dse::effective_rank")
    def _fake(x, index=None, keep_basis=False):
        P, m, d = (x.shape[0], x.shape[1], x.shape[2]) if index is None else (index.shape[0], index.shape[1], x.shape[1])
        if keep_basis:
            S = min(m, d)
            eig, vec = x.new_empty(P, S, dtype=torch.float64), x.new_empty(P, S, S, dtype=torch.float64)
        else:
            eig, vec = x.new_empty(0, dtype=torch.float64), x.new_empty(0, dtype=torch.float64)
        return x.new_empty(P), eig, vec

    @torch.library.register_fake("dse::effective_rank_backward")
    def _backward_fake(grad, x, index=None, eigenvalues=None, eigenvectors=None):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    register_autograd(SPEC, _backward, _setup_context)
