"""Loading the weights of a backbone from the checkpoint layouts SSL code writes.

Handled: DINO / iBOT (``{"teacher": ..., "student": ...}`` with ``backbone.`` / ``module.``
prefixes; the teacher is taken by default, as their evaluation code does), MoCo v3
(``{"state_dict": ...}`` with ``module.base_encoder.`` / ``module.momentum_encoder.``; the base
encoder is taken by default), Lightning (``{"state_dict": ...}`` with a ``model.`` or similar
prefix), plain state_dicts (``torch.save(model.state_dict())``), ``{"model": ...}`` wrappers and
``.safetensors`` files.

Auto-detection picks the sub-dict and the key prefix under which the most of the model's
parameters are found (ties: not a momentum/EMA copy, then the shorter prefix). ``key`` and
``prefix`` override it. ``rename`` rewrites the keys left after the prefix with regular
expressions, for layouts whose names differ from the model's (a torchvision ResNet flattened into
``nn.Sequential``: ``0.`` → ``conv1.``, ``4.`` → ``layer1.``, ...). Loading refuses a checkpoint that leaves any model parameter unset or
has a tensor of the wrong shape: scoring a half-random network would give a meaningless number.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["CheckpointError", "LoadReport", "read_checkpoint", "load_weights", "parse_rename"]

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
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (key after the prefix, its new name)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.mismatched

    def summary(self) -> str:
        where = f"[{self.key!r}]" if self.key else "(top level)"
        text = f"{self.path}: {where} prefix {self.prefix!r}: {self.loaded} tensors loaded"
        if self.renamed:
            shown = ", ".join(f"{old} -> {new}" for old, new in self.renamed[:3])
            text += f"; renamed: {shown}" + (f", … ({len(self.renamed)} in all)" if len(self.renamed) > 3 else "")
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


Rename = list[tuple["re.Pattern[str]", str]]


def parse_rename(rules) -> Rename:
    """Key renaming rules, checked: ``"REGEX=REPLACEMENT"`` strings (split at the first ``=``) or
    ``(regex, replacement)`` pairs. Each rule is ``re.sub(regex, replacement, key)`` on the key left
    after the prefix, applied in order; ``\\1`` / ``\\g<name>`` refer to the regex's groups.
    Raises ``ValueError`` naming the rule that is not valid."""
    if rules is None:
        return []
    if isinstance(rules, str):
        rules = [rules]
    parsed = []
    for rule in rules:
        if isinstance(rule, str):
            if "=" not in rule:
                raise ValueError(f"rename rule {rule!r} must be REGEX=REPLACEMENT, e.g. '^4\\.=layer1.'")
            pattern, replacement = rule.split("=", 1)
        elif isinstance(rule, Sequence) and len(rule) == 2 and all(isinstance(p, str) for p in rule):
            pattern, replacement = rule
        else:
            raise ValueError(f"a rename rule must be a 'REGEX=REPLACEMENT' string or a (regex, replacement) pair, "
                             f"got {rule!r}")
        if not pattern:
            raise ValueError(f"rename rule {rule!r} has an empty regex")
        try:
            compiled = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"rename rule {rule!r}: {pattern!r} is not a valid regular expression ({e})") from None
        for number, name in re.findall(r"\\(\d+)|\\g<([^>]*)>", replacement):
            group = number or name
            known = (group.isdigit() and int(group) <= compiled.groups) or group in compiled.groupindex
            if not known:
                raise ValueError(f"rename rule {rule!r}: the replacement refers to group {group!r}, which "
                                 f"{pattern!r} does not have")
        parsed.append((compiled, replacement))
    return parsed


def _is_parsed(rules) -> bool:
    return isinstance(rules, list) and all(isinstance(r, tuple) and isinstance(r[0], re.Pattern) for r in rules)


def rename_rules_setting(rules: Rename) -> list[list[str]] | None:
    """The rules as JSON (for the results table's settings); None without rules."""
    return [[p.pattern, r] for p, r in rules] or None


def _renamed(key: str, rules: Rename) -> str:
    for pattern, replacement in rules:
        key = pattern.sub(replacement, key)
    return key


def _best_prefix(ckpt_keys, model_keys: set[str], rules: Rename = ()) -> tuple[str, int]:
    """The prefix whose stripping (then renaming) matches the most model keys, and that count."""
    counts: dict[str, int] = {}
    for k in ckpt_keys:
        parts = k.split(".")
        for i in range(len(parts)):
            if _renamed(".".join(parts[i:]), rules) in model_keys:
                prefix = ".".join(parts[:i]) + ("." if i else "")
                counts[prefix] = counts.get(prefix, 0) + 1
    if not counts:
        return "", 0
    best = max(counts, key=lambda p: (counts[p], not any(w in p for w in _DISFAVOURED), -len(p)))
    return best, counts[best]


def load_weights(model: nn.Module, path: str | os.PathLike, *, key: str | None = None, prefix: str | None = None,
                 rename=None, strict: bool = True, unsafe: bool = False) -> LoadReport:
    """Loads the backbone weights in ``path`` into ``model`` and reports what happened.

    Args:
        model: the network whose ``state_dict()`` names are matched.
        path: a checkpoint file (pickled by ``torch.save``, or ``.safetensors``).
        key: the sub-dict holding the weights (``"teacher"``, ``"state_dict"``; nested with ``/``);
            default: detected.
        prefix: the key prefix to strip (``"module.backbone."``); only keys under it are used.
            Default: detected.
        rename: key renaming rules applied after the prefix is stripped (see :func:`parse_rename`):
            ``["^0\\.=conv1.", "^4\\.=layer1."]`` or ``[("^0\\.", "conv1."), ...]``. The prefix is
            detected on the renamed keys. Two keys renamed to one name are refused.
        strict: refuse (raise :class:`CheckpointError`) when a model tensor is missing or has
            another shape. Unexpected extra tensors are reported, never fatal.
        unsafe: see :func:`read_checkpoint`.

    Returns:
        :class:`LoadReport`. The model's tensors are replaced only when loading succeeds.
    """
    rules = rename if _is_parsed(rename) else parse_rename(rename)
    obj = read_checkpoint(path, unsafe=unsafe)
    model_state = model.state_dict()
    model_keys = set(model_state)
    best = None
    for sub_key, state in _candidate_dicts(obj, key):
        if prefix is not None:
            chosen = prefix
            matched = sum(1 for k in state if k.startswith(prefix) and _renamed(k[len(prefix):], rules) in model_keys)
        else:
            chosen, matched = _best_prefix(state.keys(), model_keys, rules)
        if best is None or matched > best[3]:
            best = (sub_key, state, chosen, matched)
    sub_key, state, chosen, _ = best
    report = LoadReport(path=str(path), key=sub_key, prefix=chosen, loaded=0)
    stripped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for k, v in state.items():
        if not k.startswith(chosen):
            continue
        old = k[len(chosen):]
        new = _renamed(old, rules)
        if new in origin:
            raise CheckpointError(f"{path}: the rename rules map both {origin[new]!r} and {old!r} to {new!r}; "
                                  "make them more specific (anchor them with ^, end them with \\.)")
        origin[new] = old
        stripped[new] = v
        if new != old:
            report.renamed.append((old, new))
    report.missing = sorted(model_keys - stripped.keys())
    report.unexpected = sorted(stripped.keys() - model_keys)
    report.mismatched = sorted(k for k in model_keys & stripped.keys() if stripped[k].shape != model_state[k].shape)
    usable = {k: v for k, v in stripped.items() if k in model_keys and k not in report.mismatched}
    report.loaded = len(usable)
    if strict and not report.ok:
        raise CheckpointError(f"the weights do not fit the model, refusing to use them: {report.summary()}")
    model.load_state_dict(usable, strict=False)
    return report
