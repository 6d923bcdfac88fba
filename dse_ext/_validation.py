"""Argument checks at the Python boundary: actionable ``ValueError``/``TypeError``."""

from __future__ import annotations

import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_float_tensor(x, name: str, check_finite: bool = True) -> torch.Tensor:
    """Check that ``x`` is a non-empty (and, if asked, finite) floating tensor; upcast half types to float32."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), got {x.dtype}; "
            f"convert with {name}.float()"
        )
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    # Fast path: a sum is finite when every element is (an overflowing sum of finite
    # values falls through to the exact test).
    if not check_finite or x.device.type == "meta":  # meta tensors have no data to check
        return x
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s); DSE is undefined for non-finite features")
    return x


def check_ndim(x: torch.Tensor, allowed: tuple[int, ...], name: str, meaning: str) -> None:
    if x.dim() not in allowed:
        raise ValueError(f"{name} must have shape {meaning}, got {x.dim()}-D shape {tuple(x.shape)}")


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


SEED_LIMIT = 2**63  # seeds are int64 in the compiled ops and in torch.Generator.manual_seed


def check_seed(seed, name: str = "seed") -> int:
    """Check that ``seed`` is an integer (a Python or NumPy int, not a bool) in ``[0, 2**63)``
    and return it as a Python ``int``.

    Raises ``TypeError`` for any other type (a float such as ``1.5``, a string, ``True``) and
    ``ValueError`` outside the range, naming the range: seeds reach the compiled ops as int64.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be an int in [0, 2**63), got {type(seed).__name__} {seed!r}")
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{name} must be in [0, 2**63) (a non-negative int64), got {seed}")
    return int(seed)


def check_labels(labels, shape: tuple[int, ...], num_clusters: int, device: torch.device, name: str,
                 allow_ignore: bool = False) -> torch.Tensor:
    """Integer labels of the given shape with values in ``[0, num_clusters)`` (or -1 if allowed)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {labels.dtype}")
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"{name} is on {labels.device} but the features are on {device}")
    labels = labels.long()
    low = -1 if allow_ignore else 0
    if labels.numel() and (int(labels.min()) < low or int(labels.max()) >= num_clusters):
        raise ValueError(
            f"{name} must take values in [{low}, {num_clusters}), got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return labels
