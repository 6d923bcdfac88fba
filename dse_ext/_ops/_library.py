"""The compiled module: loading it, what it was built with, and the CUDA validation flag."""

from __future__ import annotations

import contextlib
import math
import warnings

import torch

try:  # torch must be imported first: the module relies on torch's shared libraries.
    from .. import _C  # noqa: F401

    IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # pragma: no cover - exercised only without a build
    _C = None
    IMPORT_ERROR = exc


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


def empty_for_overwrite(shape, like: torch.Tensor) -> torch.Tensor:
    """An uninitialized contiguous tensor of ``shape`` with ``like``'s dtype and device, for a result
    that is written in full. On the CPU, when it is large (a batch of tokens: 77 MB at 256 × 196 ×
    384), it comes from the compiled module's output cache (csrc/cpu/output_cache.h,
    :mod:`dse_ext.memory`): a buffer of the same size that an earlier call freed, already mapped,
    instead of fresh memory whose first write page-faults. Smaller ones are plain ``torch.empty``."""
    shape = tuple(int(s) for s in shape)
    if (_C is not None and like.device.type == "cpu"
            and math.prod(shape) * like.element_size() >= _C.cached_output_min_bytes
            and like.dtype in _CACHEABLE_DTYPES):
        return torch.from_dlpack(_C._empty_filled_output(list(shape), _CACHEABLE_DTYPES[like.dtype]))
    return torch.empty(shape, dtype=like.dtype, device=like.device)


_CACHEABLE_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
                     torch.bfloat16: "bfloat16"}


# The CUDA kernels are compiled, linked and tested against the CPU kernels by the device ×
# dtype test table (python_tests/test_op_table.py), but that suite has not run on a GPU yet.
# Set to True once a GPU run of it passes (and bench/RESULTS.md records it).
CUDA_VALIDATED = False
_warned_cuda = False


def warn_if_unvalidated(device: torch.device) -> None:
    """Warn once per process when the not yet validated CUDA kernels are about to run."""
    global _warned_cuda
    if device.type == "cuda" and not CUDA_VALIDATED and not _warned_cuda:
        _warned_cuda = True
        warnings.warn(
            "dse_ext: the CUDA kernels have not been validated on a GPU yet; run "
            "`pytest python_tests/test_op_table.py` on this machine, or use backend='reference' "
            "(or CPU tensors) for results you can trust",
            RuntimeWarning,
            stacklevel=4,
        )


@contextlib.contextmanager
def deferred_eigen_status(device: torch.device):
    """Within the block, the CUDA eigensolvers of this thread on ``device`` do not read their
    status on the host (csrc/cuda/solver.cuh): a matrix they fail on sets the yielded flag, a
    0-dim int32 tensor on ``device``, to 1, and the results of that call are not usable. The
    caller reads the flag with its other checks and recomputes without deferral when it is set.
    Yields None where there is nothing to defer (CPU tensors, or no CUDA kernels).
    """
    if device.type != "cuda" or _C is None or not bool(_C.with_cuda):
        yield None
        return
    flag = torch.zeros((), dtype=torch.int32, device=device)
    _C._defer_cuda_eigen_status(flag.data_ptr(), flag.device.index)
    try:
        yield flag
    finally:
        _C._defer_cuda_eigen_status(0, -1)
