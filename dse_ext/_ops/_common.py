"""What every op module shares: its description, the kernel check, batching, autograd plumbing."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validation import as_float_tensor, check_ndim
from . import _library


@dataclass(frozen=True)
class OpSpec:
    """One compiled op: its name in ``torch.ops.dse`` and, if differentiable, its backward op."""

    name: str
    backward: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Every ``torch.ops.dse`` name this op registers (the op and its backward)."""
        return (self.name,) if self.backward is None else (self.name, self.backward)


def has_kernel(device: torch.device, names) -> bool:
    """True when every op in ``names`` has a compiled kernel for ``device``'s type."""
    if _library._C is None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
    if key is None:
        return False
    return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"dse::{n}", key) for n in names)


def require_kernel(x: torch.Tensor) -> None:
    """Raise with the reason when no compiled kernel can run on ``x``'s device."""
    from . import OP_NAMES  # the package's registry (imported here: it imports this module)

    if not _library.extension_available():
        raise RuntimeError(
            f"dse_ext's compiled operators are not available ({_library.IMPORT_ERROR}); "
            "reinstall with `pip install --no-build-isolation .` or use dse_ext.reference"
        )
    if not has_kernel(x.device, OP_NAMES):
        raise RuntimeError(
            f"dse_ext has no compiled kernels for {x.device.type} tensors in this build "
            f"(CUDA kernels built: {_library.cuda_built()}); move the tensor to the CPU or use dse_ext.reference"
        )
    _library.warn_if_unvalidated(x.device)


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


class DoubleBackwardError(RuntimeError):
    """A second-order gradient reached a dse op, whose backward is not differentiable."""


def double_backward_error(what: str, gradient: str) -> DoubleBackwardError:
    """The error a second-order gradient through ``what`` (whose gradient is ``gradient``) raises."""
    return DoubleBackwardError(
        f"double backward through {what} is not supported: its gradient ({gradient}) is not differentiable, so "
        f"second-order gradients (torch.autograd.grad(..., create_graph=True) then backward, gradgradcheck, "
        f"Hessians) cannot flow through it. First-order gradients work, also with create_graph=True; keep the "
        f"DSE term out of what is differentiated twice (e.g. compute a gradient penalty from the other loss terms "
        f"only)")


def register_autograd(spec: OpSpec, backward, setup_context) -> None:
    """Registers ``spec``'s first-order autograd formula, and one for its backward op that
    raises :class:`DoubleBackwardError`.

    A first-order backward with ``create_graph=True`` still works (e.g. a gradient penalty on
    other terms of the loss); only a second-order gradient that actually flows back through a
    dse op raises (torch would otherwise return silent zeros with a warning).
    """
    torch.library.register_autograd(f"dse::{spec.name}", backward, setup_context=setup_context)

    def no_context(ctx, inputs, output):
        pass

    def fail(ctx, *grads):
        raise double_backward_error(f"dse::{spec.name}", f"dse::{spec.backward}")

    torch.library.register_autograd(f"dse::{spec.backward}", fail, setup_context=no_context)


def first_order_only(what: str, gradient: str) -> type[torch.autograd.Function]:
    """An autograd Function that passes a computed gradient through (``apply(value, *inputs)``,
    ``inputs`` being what the gradient depends on) and raises :func:`double_backward_error` for
    ``what`` and ``gradient`` when differentiated: for backward formulas written with plain torch
    ops, whose graph would otherwise give a wrong second order."""

    class FirstOrderOnly(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
            return value.clone()

        @staticmethod
        def backward(ctx, *grads):
            raise double_backward_error(what, gradient)

    return FirstOrderOnly
