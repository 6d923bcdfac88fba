"""The compiled operators, one module per op, and the registry they form.

Each op has one Python place, named like the op (:mod:`.kmeans`, :mod:`.cluster_css`,
:mod:`.effective_rank`, :mod:`.nearest_other_centroid_distance`): its argument preparation (the
reference twin in :mod:`dse_ext.reference` shares it), its ``torch.nn.functional``-style wrapper
(re-exported by :mod:`dse_ext.functional`), its fake (meta) kernels and its autograd formula.
:data:`OPS` lists them; every op list (kernel checks, tests) derives from it.

The raw ops check shapes, dtypes and devices, but not finiteness: reading every value for
NaN/Inf would cost a pass over the data, so NaN/Inf input gives unspecified output, not an
error. The checked boundary is :mod:`dse_ext.functional` and :func:`dse_ext.dse`, which also
check label ranges and seeds (and ``dse`` rescales the tokens so that no square overflows).
Autograd formulas are first-order only: a second-order gradient through a dse op raises
:class:`DoubleBackwardError`.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from . import _library
from ._common import DoubleBackwardError, OpSpec, require_kernel
from ._common import has_kernel as _has_kernel
from ._library import (IMPORT_ERROR, build_info, cuda_built, deferred_eigen_status, extension_available,
                       warn_if_unvalidated)
from . import cluster_css, effective_rank, kmeans, nearest_other_centroid_distance

MODULES = (kmeans, cluster_css, effective_rank, nearest_other_centroid_distance)
OPS: tuple[OpSpec, ...] = tuple(module.SPEC for module in MODULES)
OP_NAMES: tuple[str, ...] = tuple(name for spec in OPS for name in spec.names)

__all__ = ["OPS", "OP_NAMES", "MODULES", "UNCHECKED", "OpSpec", "DoubleBackwardError", "extension_available", "cuda_built",
           "build_info", "has_kernel", "require_kernel", "warn_if_unvalidated", "deferred_eigen_status", "IMPORT_ERROR"]


# The ops without their argument checks, for callers that built the arguments themselves
# (dse_ext.dse): same signatures as dse_ext.reference, batched (P, ...) arguments only.
UNCHECKED = SimpleNamespace(**{module.SPEC.name: module.unchecked for module in MODULES})


def has_kernel(device: torch.device) -> bool:
    """True when every dse op has a compiled kernel for ``device``'s type."""
    return _has_kernel(device, OP_NAMES)


if _library._C is not None:
    for _module in MODULES:
        _module.register()
