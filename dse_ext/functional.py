"""The compiled DSE building blocks, ``torch.nn.functional`` style.

Each function validates its input, then calls one batched ``torch.ops.dse`` operator.
Half-precision inputs are computed in float32 and returned as float32; spectral
reductions are computed in float64 internally whatever the input dtype.

The checked boundary is this module (and :func:`dse_ext.dse` above it): here every tensor is
checked for type, shape, device, label range and finiteness (NaN/Inf raise a ``ValueError``
naming the argument and the count of bad values), and seeds for being ints in ``[0, 2**63)``.
The raw ``torch.ops.dse.*`` operators check shapes, dtypes and devices only: for speed they do
not read the data to check finiteness, and NaN/Inf input gives unspecified (NaN or garbage)
output rather than an error. Call them directly only with data you know to be finite.

Gradients: :func:`cluster_css`, :func:`effective_rank` and :func:`nearest_other_centroid_distance`
are differentiable once; a second-order gradient through them raises
:class:`dse_ext.DoubleBackwardError`.

Each function is defined with its op in :mod:`dse_ext._ops` (one module per op).
"""

from __future__ import annotations

import warnings

from ._ops import require_kernel as _require_kernel  # noqa: F401  (used by dse_ext.metric)
from ._ops.cluster_css import cluster_css
from ._ops.effective_rank import effective_rank
from ._ops.kmeans import kmeans
from ._ops.nearest_other_centroid_distance import nearest_other_centroid_distance

__all__ = ["kmeans", "cluster_css", "effective_rank", "nearest_other_centroid_distance"]


def centered_singular_sum(x, labels, num_clusters: int):
    """Deprecated name of :func:`cluster_css` (the op's name everywhere else)."""
    warnings.warn("dse_ext.functional.centered_singular_sum is deprecated: use cluster_css (same arguments)",
                  DeprecationWarning, stacklevel=2)
    return cluster_css(x, labels, num_clusters)
