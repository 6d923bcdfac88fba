"""Loads the compiled operators and registers their fake (meta) kernels.

After import, ``torch.ops.dse.*`` exist when the extension was built. The fake
kernels let ``torch.compile`` and ``torch.library.opcheck`` reason about output
shapes without running the kernels.

The raw ops check shapes, dtypes and devices, but not finiteness: reading every value for
NaN/Inf would cost a pass over the data, so NaN/Inf input gives unspecified output, not an
error. The checked boundary is :mod:`dse_ext.functional` and :func:`dse_ext.dse`, which also
check label ranges and seeds (and ``dse`` rescales the tokens so that no square overflows).
Autograd formulas are registered by :mod:`dse_ext._autograd`: first-order only; a second-order
gradient through a dse op raises.
"""

from __future__ import annotations

import warnings

import torch

try:  # torch must be imported first: the module relies on torch's shared libraries.
    from . import _C  # noqa: F401

    IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # pragma: no cover - exercised only without a build
    _C = None
    IMPORT_ERROR = exc

OP_NAMES = ("kmeans", "cluster_css", "effective_rank", "nearest_other_centroid_distance",
            "cluster_css_backward", "effective_rank_backward", "nearest_other_centroid_distance_backward")


def extension_available() -> bool:
    """True when the compiled operators are loaded."""
    return _C is not None


def cuda_built() -> bool:
    """True when the compiled operators include CUDA kernels."""
    return _C is not None and bool(_C.with_cuda)


def build_info() -> dict:
    """How the compiled operators were built and which CPU paths they take on this machine."""
    if _C is None:
        return {"extension": False, "error": str(IMPORT_ERROR)}
    return {"extension": True, "version": _C.__version__, "cuda": bool(_C.with_cuda),
            "cuda_batched_syev": bool(_C.cuda_batched_syev),
            "direct_lapack": bool(_C.direct_lapack), "cpu_simd": str(_C.cpu_simd)}


# The CUDA kernels are compiled, linked and tested against the CPU kernels by
# python_tests/test_cuda.py, but that suite has not run on a GPU yet. Set to True
# once a GPU run of it passes (and bench/RESULTS.md records it).
CUDA_VALIDATED = False
_warned_cuda = False


def warn_if_unvalidated(device: torch.device) -> None:
    """Warn once per process when the not yet validated CUDA kernels are about to run."""
    global _warned_cuda
    if device.type == "cuda" and not CUDA_VALIDATED and not _warned_cuda:
        _warned_cuda = True
        warnings.warn(
            "dse_ext: the CUDA kernels have not been validated on a GPU yet; run "
            "`pytest python_tests/test_cuda.py` on this machine, or use backend='reference' "
            "(or CPU tensors) for results you can trust",
            RuntimeWarning,
            stacklevel=3,
        )


def has_kernel(device: torch.device) -> bool:
    """True when every dse op has a compiled kernel for ``device``'s type."""
    if _C is None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
    if key is None:
        return False
    return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"dse::{n}", key) for n in OP_NAMES)


if _C is not None:

    @torch.library.register_fake("dse::kmeans")
    def _kmeans_fake(x, counts, k, max_iters, tol, seed, init):
        P, M, d = x.shape
        return (x.new_empty(P, k, d), x.new_empty(P, M, dtype=torch.long), x.new_empty(P, dtype=torch.long))

    @torch.library.register_fake("dse::cluster_css")
    def _cluster_css_fake(x, labels, k, keep_basis=False):
        P, M, d = x.shape
        if keep_basis:
            S = min(M - 1, d)
            eig, vec = x.new_empty(P, k, S, dtype=torch.float64), x.new_empty(P, k, S, S, dtype=torch.float64)
        else:
            eig, vec = x.new_empty(0, dtype=torch.float64), x.new_empty(0, dtype=torch.float64)
        return x.new_empty(P, k), x.new_empty(P, k, dtype=torch.long), eig, vec

    @torch.library.register_fake("dse::effective_rank")
    def _effective_rank_fake(x, index=None, keep_basis=False):
        P, m, d = (x.shape[0], x.shape[1], x.shape[2]) if index is None else (index.shape[0], index.shape[1], x.shape[1])
        if keep_basis:
            S = min(m, d)
            eig, vec = x.new_empty(P, S, dtype=torch.float64), x.new_empty(P, S, S, dtype=torch.float64)
        else:
            eig, vec = x.new_empty(0, dtype=torch.float64), x.new_empty(0, dtype=torch.float64)
        return x.new_empty(P), eig, vec

    @torch.library.register_fake("dse::nearest_other_centroid_distance")
    def _nearest_other_fake(x, centroids, labels, valid):
        return x.new_empty(x.shape[0], x.shape[1])

    @torch.library.register_fake("dse::cluster_css_backward")
    def _cluster_css_backward_fake(grad, x, labels, k, eigenvalues=None, eigenvectors=None):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("dse::effective_rank_backward")
    def _effective_rank_backward_fake(grad, x, index=None, eigenvalues=None, eigenvectors=None):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("dse::nearest_other_centroid_distance_backward")
    def _nearest_other_backward_fake(grad, x, centroids, labels, valid):
        return (torch.empty_like(x, memory_format=torch.contiguous_format),
                torch.empty_like(centroids, memory_format=torch.contiguous_format))

    from . import _autograd

    _autograd.register()
