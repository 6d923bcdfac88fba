"""dse_ext: the Dense representation Structure Estimator (DSE) as compiled PyTorch ops.

>>> import torch, dse_ext
>>> out = dse_ext.dse(torch.randn(16, 196, 384))
>>> out.dse, out.m_inter, out.m_intra, out.m_dim          # 0-dim tensors

Training: :class:`dse_ext.DSERegularizer` (loss = −β·DSE on patch tokens) and
:class:`dse_ext.DSARegularizer` (the Dynamic Semantic Adjuster on embeddings);
:func:`dse_ext.crowding` measures intra- vs inter-class spread.

Real training runs: :func:`dense_features` (``(B, N, d)`` tokens from timm models or any module),
:func:`load_weights` (DINO/iBOT/MoCo v3/Lightning/plain/safetensors checkpoints),
:func:`score_checkpoints` and the ``dse score`` command, :func:`select_checkpoints` /
:func:`paper_lambda` (``dse select``), :func:`plot_results` (``dse plot``), :class:`DSEMonitor`
for training loops and :mod:`dse_ext.integrations.lightning`. :mod:`dse_ext.baselines` has the
label-free scores DSE is compared with (RankMe, dense RankMe, α-ReQ, LiDAR); ``dse demo`` runs
the end-to-end demo (:mod:`dse_ext.demo`).

Modules: :mod:`dse_ext.functional` (the compiled building blocks),
:mod:`dse_ext.reference` (their pure-PyTorch twins).
"""

import torch  # noqa: F401  (load torch's libraries before the compiled module)

import importlib

from . import baselines, checkpoints, features, functional, memory, reference, results, scoring
from ._ops import DoubleBackwardError, build_info, cuda_built, extension_available
from .checkpoints import CheckpointError, load_weights
from .crowding import CrowdingOutput, crowding
from .features import FeatureExtractor, dense_features
from .metric import DSEOutput, dse
from .regularizers import DSARegularizer, DSERegularizer
from .scores import available_scores, register_score
from .scoring import SettingsMismatchError, TableInUseError, score_checkpoints, score_features

# Loaded on first use (numpy, matplotlib, tensorboard stay out of `import dse_ext`).
_LAZY = {"select_checkpoints": "selection", "paper_lambda": "selection", "Selection": "selection",
         "plot_results": "plotting", "DSEMonitor": "monitor"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"
__all__ = ["dse", "DSEOutput", "DSERegularizer", "DSARegularizer", "crowding", "CrowdingOutput", "functional",
           "reference", "extension_available", "cuda_built", "build_info", "dense_features", "FeatureExtractor",
           "load_weights", "CheckpointError", "score_checkpoints", "score_features", "SettingsMismatchError",
           "TableInUseError", "DoubleBackwardError", "select_checkpoints",
           "paper_lambda", "Selection", "plot_results", "DSEMonitor", "baselines", "register_score",
           "available_scores", "memory"]
