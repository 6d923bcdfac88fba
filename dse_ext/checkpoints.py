"""Loading the weights of a backbone from the checkpoint layouts SSL code writes.

Handled: DINO / iBOT (``{"teacher": ..., "student": ...}`` with ``backbone.`` / ``module.``
prefixes; the teacher is taken by default, as their evaluation code does), MoCo v3
(``{"state_dict": ...}`` with ``module.base_encoder.`` / ``module.momentum_encoder.``; the base
encoder is taken by default), Lightning (``{"state_dict": ...}`` with a ``model.`` or similar
prefix), plain state_dicts (``torch.save(model.state_dict())``), ``{"model": ...}`` wrappers and
``.safetensors`` files.

Auto-detection picks the sub-dict and the key prefix under which the most of the model's
parameters are found (ties: not a momentum/EMA copy, then the shorter prefix). ``key`` and
``prefix`` override it. Loading refuses a checkpoint that leaves any model parameter unset or
has a tensor of the wrong shape: scoring a half-random network would give a meaningless number.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["CheckpointError", "LoadReport", "read_checkpoint", "load_weights"]

# Sub-dicts tried in this order when no key is given (the first holding the model wins ties).
_SUBDICT_KEYS = ("teacher", "state_dict", "model", "module", "student", "model_ema", "network", "net", "encoder")
_DISFAVOURED = ("momentum", "ema", "target")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class LoadReport:
    """What loading a checkpoint into a model did."""

    path: str
    key: str | None                     # the sub-dict used (None: the top level)
    prefix: str                         # stripped from the checkpoint's keys
    loaded: int                         # model tensors set from the checkpoint
    missing: list[str] = field(default_factory=list)      # model tensors the checkpoint lacks
    unexpected: list[str] = field(default_factory=list)   # checkpoint tensors under the prefix the model lacks
    mismatched: list[str] = field(default_factory=list)   # same name, other shape

    @property
    def ok(self) -> bool:
        return not self.missing and not self.mismatched

    def summary(self) -> str:
        where = f"[{self.key!r}]" if self.key else "(top level)"
        text = f"{self.path}: {where} prefix {self.prefix!r}: {self.loaded} tensors loaded"
        for name, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                           ("shape mismatch", self.mismatched)):
            if keys:
                shown = ", ".join(keys[:6]) + (f", … ({len(keys)} in all)" if len(keys) > 6 else "")
                text += f"; {name}: {shown}"
        return text


def read_checkpoint(path: str | os.PathLike, *, unsafe: bool = False):
    """The object stored in ``path`` on the CPU (a ``.safetensors`` file gives a dict of tensors).

    Pickled checkpoints are read with ``torch.load(weights_only=True)``, which also accepts the
    ``argparse.Namespace`` that DINO/iBOT/MoCo store beside the weights. ``unsafe=True`` allows
    any pickled object: only for files you trust. Raises :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise CheckpointError(f"{path}: reading .safetensors needs the safetensors package "
                                      "(pip install safetensors)") from None
            return load_file(str(path), device="cpu")
        if unsafe:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # corrupt zip, truncated pickle, disallowed global, ...
        raise CheckpointError(f"{path}: cannot read the checkpoint: {_reason(e, unsafe)}") from e


def _reason(error: Exception, unsafe: bool) -> str:
    """The useful line of a torch.load error."""
    text = str(error)
    if "Unsupported global" in text and not unsafe:
        name = text.split("GLOBAL", 1)[1].split()[0] if "GLOBAL" in text else "a Python object"
        return (f"it stores {name} besides tensors; if you trust the file, load it unsafely "
                "(unsafe=True / --unsafe-load)")
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        return f"not a readable torch checkpoint (corrupt or truncated? {detail})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _candidate_dicts(obj, key: str | None):
    """(key, state_dict) pairs to consider."""
    if key is not None:
        node = obj
        for part in key.split("/"):
            if not isinstance(node, dict) or part not in node:
                available = list(obj.keys()) if isinstance(obj, dict) else []
                raise CheckpointError(f"the checkpoint has no sub-dict {key!r}; its top-level keys: {available}")
            node = node[part]
        if not _is_state_dict(node):
            raise CheckpointError(f"checkpoint[{key!r}] is not a dict of tensors")
        return [(key, node)]
    if _is_state_dict(obj):
        return [(None, obj)]
    if not isinstance(obj, dict):
        raise CheckpointError(f"the checkpoint holds a {type(obj).__name__}, not a state dict")
    found = [(k, obj[k]) for k in _SUBDICT_KEYS if k in obj and _is_state_dict(obj[k])]
    found += [(k, v) for k, v in obj.items() if k not in _SUBDICT_KEYS and _is_state_dict(v)]
    if not found:
        raise CheckpointError(f"no state dict found in the checkpoint (top-level keys: {list(obj.keys())}); "
                              "name the sub-dict that holds the weights (key=... / --checkpoint-key)")
    return found


def _best_prefix(ckpt_keys, model_keys: set[str]) -> tuple[str, int]:
    """The prefix whose stripping matches the most model keys, and that count."""
    counts: dict[str, int] = {}
    for k in ckpt_keys:
        parts = k.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in model_keys:
                prefix = ".".join(parts[:i]) + ("." if i else "")
                counts[prefix] = counts.get(prefix, 0) + 1
    if not counts:
        return "", 0
    best = max(counts, key=lambda p: (counts[p], not any(w in p for w in _DISFAVOURED), -len(p)))
    return best, counts[best]


def load_weights(model: nn.Module, path: str | os.PathLike, *, key: str | None = None, prefix: str | None = None,
                 strict: bool = True, unsafe: bool = False) -> LoadReport:
    """Loads the backbone weights in ``path`` into ``model`` and reports what happened.

    Args:
        model: the network whose ``state_dict()`` names are matched.
        path: a checkpoint file (pickled by ``torch.save``, or ``.safetensors``).
        key: the sub-dict holding the weights (``"teacher"``, ``"state_dict"``; nested with ``/``);
            default: detected.
        prefix: the key prefix to strip (``"module.backbone."``); only keys under it are used.
            Default: detected.
        strict: refuse (raise :class:`CheckpointError`) when a model tensor is missing or has
            another shape. Unexpected extra tensors are reported, never fatal.
        unsafe: see :func:`read_checkpoint`.

    Returns:
        :class:`LoadReport`. The model's tensors are replaced only when loading succeeds.
    """
    obj = read_checkpoint(path, unsafe=unsafe)
    model_state = model.state_dict()
    model_keys = set(model_state)
    best = None
    for sub_key, state in _candidate_dicts(obj, key):
        if prefix is not None:
            chosen, matched = prefix, sum(1 for k in state if k.startswith(prefix) and k[len(prefix):] in model_keys)
        else:
            chosen, matched = _best_prefix(state.keys(), model_keys)
        if best is None or matched > best[3]:
            best = (sub_key, state, chosen, matched)
    sub_key, state, chosen, _ = best
    stripped = {k[len(chosen):]: v for k, v in state.items() if k.startswith(chosen)}
    report = LoadReport(path=str(path), key=sub_key, prefix=chosen, loaded=0)
    report.missing = sorted(model_keys - stripped.keys())
    report.unexpected = sorted(stripped.keys() - model_keys)
    report.mismatched = sorted(k for k in model_keys & stripped.keys() if stripped[k].shape != model_state[k].shape)
    usable = {k: v for k, v in stripped.items() if k in model_keys and k not in report.mismatched}
    report.loaded = len(usable)
    if strict and not report.ok:
        raise CheckpointError(f"the weights do not fit the model, refusing to use them: {report.summary()}")
    model.load_state_dict(usable, strict=False)
    return report
