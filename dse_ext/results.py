"""The results table of checkpoint scoring: one row per checkpoint, as CSV.

Columns (:data:`COLUMNS`):

- ``checkpoint``: the file as it was given (or a name); ``epoch`` and ``step``: parsed from the
  file name, empty when it states none;
- the DSE components of :class:`dse_ext.DSEOutput` (``dse`` is the official form; empty when the
  ``dse`` score was not asked for), then the columns of the other scores of :mod:`dse_ext.scores`
  that were asked for (``rankme``, ``lidar``, a user's own, ...), ``num_images`` (images scored)
  and ``seconds`` (wall time);
- ``file``, ``file_size`` (bytes) and ``file_mtime_ns``: which file was scored — its resolved path
  (symbolic links followed) relative to the table's folder, and its size and modification time
  when it was scored. Resuming matches checkpoints by ``file``, so the same file given once as a
  relative and once as an absolute path is the same checkpoint, and a file rewritten since it was
  scored (another size or time) is noticed;
- ``settings``: the scoring settings as JSON (model, images, seed, DSE options, ...). A table
  holds rows of one set of settings: resuming with other settings is refused
  (:func:`settings_differences`), and so is selecting from a table that mixes them.

Files are written atomically (a temporary file in the same folder, flushed and renamed over the
old one) with ordinary permissions (``0666`` less the umask, or those of the table it replaces),
so an interrupted run never leaves a truncated table. Tables are read as UTF-8 (a byte-order mark
is accepted).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import uuid
from pathlib import Path
from typing import Iterable, Mapping

COMPONENTS = ("dse", "m_inter", "m_intra", "m_intra_image", "m_intra_batch", "m_dim", "avg_l2")
IDENTITY = ("file", "file_size", "file_mtime_ns")
COLUMNS = ("checkpoint", "epoch", "step", *COMPONENTS, "num_images", "seconds", *IDENTITY, "settings")
_INT_COLUMNS = ("epoch", "step", "num_images", "file_size", "file_mtime_ns")
_TEXT_COLUMNS = ("checkpoint", "file")

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


# ---------------------------------------------------------------------------------------------
# Reading and writing


def _parse(column: str, text: str):
    if column == "checkpoint":
        return text
    if text == "":
        return None
    if column in _TEXT_COLUMNS:
        return text
    if column == "settings":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"settings is not valid JSON ({e})") from None
        if not isinstance(value, dict):
            raise ValueError("settings must be a JSON object")
        return value
    if column in _INT_COLUMNS:
        return int(text)
    if column in COLUMNS:
        return float(text)
    try:  # another score's column: a number; a label column (a run's name) stays text
        return float(text)
    except ValueError:
        return text


def read_results(path: str | os.PathLike) -> list[dict]:
    """The rows of a results CSV as dicts (numbers parsed, ``settings`` as a dict, empty cells
    ``None``), in file order.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for a table
    that is not UTF-8 text, lacks ``checkpoint`` or a DSE component (the missing columns are
    named), or has a cell that does not parse (its line is named).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not a results CSV")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in ("checkpoint", *COMPONENTS) if c not in header]
            if missing:
                raise ValueError(f"{path}: not a dse_ext results table (missing columns {missing})")
            rows = []
            for raw in reader:
                try:
                    row = {k: _parse(k, v if v is not None else "") for k, v in raw.items() if k is not None}
                except ValueError as e:
                    raise ValueError(f"{path}, line {reader.line_num}: {e}") from None
                rows.append(row)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the table as UTF-8") from None
    except csv.Error as e:
        raise ValueError(f"{path}: not a readable CSV ({e})") from None
    return rows


def _format(column: str, value) -> str:
    if value is None:
        return ""
    if column == "settings":
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def score_columns_of(rows: Iterable[Mapping]) -> list[str]:
    """The columns of the rows beyond :data:`COLUMNS` (other scores'), in order of appearance."""
    extra: dict[str, None] = {}
    for row in rows:
        for column in row:
            if column not in COLUMNS:
                extra[column] = None
    return list(extra)


def table_columns(rows: Iterable[Mapping]) -> list[str]:
    """The header of a table of these rows: :data:`COLUMNS` with the other scores' columns after
    the DSE components."""
    at = COLUMNS.index("num_images")
    return [*COLUMNS[:at], *score_columns_of(rows), *COLUMNS[at:]]


def write_results(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Writes ``rows`` (dicts with the keys of :data:`COLUMNS`, and any other scores' columns)
    atomically to ``path``.

    The new file gets the permissions of the table it replaces, or ``0666`` less the umask.
    """
    rows = list(rows)
    columns = table_columns(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed an existing table's mode
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([_format(c, row.get(c)) for c in columns])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------------------------------------
# Training order


def order_key(rows: list[Mapping]) -> str | None:
    """Which number orders these rows in training: ``"epoch"`` when any row states an epoch,
    else ``"step"`` when any states a step, else ``None`` (no row is numbered)."""
    if any(row.get("epoch") is not None for row in rows):
        return "epoch"
    if any(row.get("step") is not None for row in rows):
        return "step"
    return None


def split_training_order(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """``(numbered, unnumbered)``: the rows whose file name gives their place in training, sorted
    numerically, and the others in their given order.

    Rows are ordered by epoch (ties by step) when any row states an epoch, else by step (see
    :func:`order_key`). A row without that number (``last.ckpt``, DINO's ``checkpoint.pth``) has
    no known place in training and is returned in ``unnumbered``. Ties keep the given order.
    When no row is numbered, every row is in ``unnumbered``.
    """
    key = order_key(rows)
    if key is None:
        return [], list(rows)
    numbered = [(i, row) for i, row in enumerate(rows) if row.get(key) is not None]
    unnumbered = [row for row in rows if row.get(key) is None]
    if key == "epoch":
        numbered.sort(key=lambda item: (item[1]["epoch"], item[1].get("step") if item[1].get("step") is not None
                                        else -1, item[0]))
    else:
        numbered.sort(key=lambda item: (item[1]["step"], item[0]))
    return [row for _, row in numbered], unnumbered


def training_order(rows: list[dict]) -> list[dict]:
    """Numbered rows sorted numerically by (epoch, step), then the un-numbered rows in their given
    order (see :func:`split_training_order`); with no numbered row, the given order."""
    numbered, unnumbered = split_training_order(rows)
    return numbered + unnumbered


# ---------------------------------------------------------------------------------------------
# Settings


def settings_differences(table: Mapping, current: Mapping, prefix: str = "") -> list[tuple[str, object, object]]:
    """``[(name, table's value, current value), ...]`` for every setting that differs.

    Nested dicts are compared key by key (names joined with ``.``); a setting missing on one
    side counts as ``None`` there.
    """
    out = []
    for name in sorted(set(table) | set(current)):
        a, b = table.get(name), current.get(name)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += settings_differences(a, b, f"{prefix}{name}.")
        elif a != b:
            out.append((f"{prefix}{name}", a, b))
    return out


def table_settings(rows: list[Mapping], path: str | os.PathLike | None = None) -> dict | None:
    """The one ``settings`` dict the rows share (``None`` for an empty table).

    Raises ``ValueError`` when rows lack settings (a table from an older dse_ext) or when the
    rows were scored with different settings (a mixed table), naming what differs.
    """
    where = f"{path}: " if path is not None else ""
    if not rows:
        return None
    missing = [str(row.get("checkpoint")) for row in rows if not row.get("settings")]
    if missing:
        raise ValueError(f"{where}{len(missing)} row(s) have no recorded settings (e.g. {missing[0]}): "
                         "the table was written by an older dse_ext, so it cannot be checked against this run")
    first = rows[0]["settings"]
    for row in rows[1:]:
        diff = settings_differences(first, row["settings"])
        if diff:
            name, a, b = diff[0]
            raise ValueError(f"{where}rows were scored with different settings ({name}: {a!r} for "
                             f"{first_name(rows)}, {b!r} for {row.get('checkpoint')}); a table must hold one "
                             "run's scores under one set of settings")
    return dict(first)


def first_name(rows: list[Mapping]) -> str:
    return str(rows[0].get("checkpoint")) if rows else "?"
