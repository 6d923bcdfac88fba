"""dse_ext: the Dense representation Structure Estimator (DSE) as compiled PyTorch ops.

>>> import torch, dse_ext
>>> out = dse_ext.dse(torch.randn(16, 196, 384))
>>> out.dse, out.m_inter, out.m_intra, out.m_dim          # 0-dim tensors

Training: :class:`dse_ext.DSERegularizer` (loss = −β·DSE on patch tokens) and
:class:`dse_ext.DSARegularizer` (the Dynamic Semantic Adjuster on embeddings);
:func:`dse_ext.crowding` measures intra- vs inter-class spread.

Modules: :mod:`dse_ext.functional` (the compiled building blocks),
:mod:`dse_ext.reference` (their pure-PyTorch twins).
"""

import torch  # noqa: F401  (load torch's libraries before the compiled module)

from . import functional, reference
from ._ops import build_info, cuda_built, extension_available
from .crowding import CrowdingOutput, crowding
from .metric import DSEOutput, dse
from .regularizers import DSARegularizer, DSERegularizer

__version__ = "0.1.0"
__all__ = ["dse", "DSEOutput", "DSERegularizer", "DSARegularizer", "crowding", "CrowdingOutput", "functional",
           "reference", "extension_available", "cuda_built", "build_info"]
