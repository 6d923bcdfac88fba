"""The results table of checkpoint scoring: one row per checkpoint, as CSV.

Columns (:data:`COLUMNS`): ``checkpoint`` (the file, or a name), ``epoch`` and ``step`` (parsed
from the file name, empty when absent), the DSE components of :class:`dse_ext.DSEOutput`
(``dse`` is the official form), ``num_images`` (images scored) and ``seconds`` (wall time).
Files are written atomically (a temporary file renamed over the old one), so an interrupted run
never leaves a truncated table.
"""

from __future__ import annotations

import csv
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable

COMPONENTS = ("dse", "m_inter", "m_intra", "m_intra_image", "m_intra_batch", "m_dim", "avg_l2")
COLUMNS = ("checkpoint", "epoch", "step", *COMPONENTS, "num_images", "seconds")
_INT_COLUMNS = ("epoch", "step", "num_images")

# "epoch=12-step=3400.ckpt" (Lightning), "checkpoint0040.pth" (DINO/iBOT), "checkpoint_0099.pth.tar"
# (MoCo v3), "ckpt_ep10.pth", "model_step5000.pt", "epoch_7.safetensors".
_EPOCH = re.compile(r"(?<![a-z])(?:epoch|ep|checkpoint|ckpt)[=_\-]?(\d+)", re.IGNORECASE)
_STEP = re.compile(r"(?<![a-z])(?:step|iteration|iter|it)[=_\-]?(\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"(\d+)")


def parse_epoch_step(name: str | os.PathLike) -> tuple[int | None, int | None]:
    """``(epoch, step)`` from a checkpoint's file name; ``None`` for what it does not state.

    A name with a ``step``/``iter`` number and no epoch gives ``(None, step)``; a name with a lone
    number and neither word (``"0040.pth"``) is read as an epoch.

    >>> parse_epoch_step("runs/epoch=12-step=3400.ckpt")
    (12, 3400)
    >>> parse_epoch_step("checkpoint0040.pth")
    (40, None)
    """
    stem = Path(name).name
    for suffix in (".tar", ".pth", ".pt", ".ckpt", ".bin", ".safetensors"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    step_match = _STEP.search(stem)
    step = int(step_match.group(1)) if step_match else None
    epoch_match = _EPOCH.search(stem)
    if epoch_match:
        return int(epoch_match.group(1)), step
    if step is None:
        numbers = _NUMBER.findall(stem)
        if len(numbers) == 1:
            return int(numbers[0]), None
    return None, step


def _parse(column: str, text: str):
    if column == "checkpoint":
        return text
    if text == "":
        return None
    return int(text) if column in _INT_COLUMNS else float(text)


def read_results(path: str | os.PathLike) -> list[dict]:
    """The rows of a results CSV as dicts (numbers parsed, empty cells ``None``), in file order.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the missing columns
    when the header lacks ``checkpoint`` or a DSE component.
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in ("checkpoint", *COMPONENTS) if c not in header]
        if missing:
            raise ValueError(f"{path}: not a dse_ext results table (missing columns {missing})")
        rows = []
        for line, raw in enumerate(reader, start=2):
            try:
                rows.append({k: _parse(k, v if v is not None else "") for k, v in raw.items() if k in COLUMNS})
            except ValueError as e:
                raise ValueError(f"{path}, line {line}: {e}") from None
    return rows


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def write_results(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Writes ``rows`` (dicts with the keys of :data:`COLUMNS`) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for row in rows:
                writer.writerow([_format(row.get(c)) for c in COLUMNS])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def training_order(rows: list[dict]) -> list[dict]:
    """Rows sorted by (epoch, step) where every row has them, else in their given order."""
    keys = []
    for row in rows:
        epoch, step = row.get("epoch"), row.get("step")
        if epoch is None and step is None:
            return list(rows)
        keys.append((epoch if epoch is not None else -1, step if step is not None else -1))
    order = sorted(range(len(rows)), key=lambda i: (keys[i], i))
    return [rows[i] for i in order]
