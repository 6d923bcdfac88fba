"""Model selection from a results table: the paper's DSE_λ and its local maxima.

The paper weighs the dimension term so that it varies as much as the separation term over one
training run::

    λ     = std(M_inter − M_intra) / std(M_dim)        (over the checkpoints of the run)
    DSE_λ = (M_inter − M_intra) + λ · M_dim

(λ = 1 gives the official form, the ``dse`` column.) Candidates are the local maxima of DSE_λ in
training order, each over a window of ``window`` checkpoints on either side (truncated at the
ends of the run); the ``top`` candidates by value are selected, best first, ties going to the
earlier checkpoint.

``by=`` selects by another score of the table the same way (``"rankme"``, ``"lidar"``, the official
``"dse"``, ...): by its quality (:attr:`dse_ext.scores.Score.value`: the value, or ``-|α - 1|`` for
α-ReQ), or by any numeric column (higher = better).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .results import order_key, read_results, settings_differences, split_training_order

__all__ = ["Selection", "paper_lambda", "dse_lambda", "local_maxima", "select_checkpoints"]

_NEEDED = ("m_inter", "m_intra", "m_dim")
# Spread of M_dim (relative to its size) below which it is rounding noise: the scores are computed in
# float32 (~6e-8 relative) and averaged; 1e-6 leaves a margin of an order of magnitude.
M_DIM_NOISE = 1e-6
_TABLE_FIELDS = ("checkpoint", "epoch", "step", "dse_lambda", "dse", "m_inter", "m_intra", "m_dim")


def _as_vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """``values`` as a finite float64 vector of shape ``(n,)``; ValueError otherwise."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a sequence of numbers ({e})") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per checkpoint), got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name} has NaN/Inf values at indices {bad.tolist()}; drop those checkpoints first")
    return array


def _components(
    m_inter: Sequence[float], m_intra: Sequence[float], m_dim: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three components as finite vectors of one common length ``n``."""
    arrays = (_as_vector(m_inter, "m_inter"), _as_vector(m_intra, "m_intra"), _as_vector(m_dim, "m_dim"))
    lengths = [len(a) for a in arrays]
    if len(set(lengths)) != 1:
        raise ValueError(
            f"m_inter, m_intra and m_dim need one value per checkpoint each; got lengths {lengths}"
        )
    return arrays


def paper_lambda(m_inter: Sequence[float], m_intra: Sequence[float], m_dim: Sequence[float]) -> float:
    """The paper's weight ``λ = std(M_inter − M_intra) / std(M_dim)`` over one run's checkpoints.

    Each argument has shape ``(n,)``, one value per checkpoint (``n ≥ 2``, all finite; the unit is
    that of the metric, λ itself is dimensionless for components in one unit). Population
    standard deviations are used; the ratio does not depend on that choice.

    Raises ``ValueError`` for fewer than two checkpoints, unequal lengths, NaN/Inf values, or an
    ``M_dim`` constant over the checkpoints (λ is undefined then; pass ``lam`` explicitly).
    """
    inter, intra, dim = _components(m_inter, m_intra, m_dim)
    n = len(dim)
    if n < 2:
        raise ValueError(
            f"λ = std(M_inter − M_intra) / std(M_dim) needs at least 2 checkpoints, got {n}; "
            "pass lam explicitly (lam=1.0 gives the official DSE)"
        )
    dim_std = float(np.std(dim))
    if np.all(dim == dim[0]) or dim_std == 0.0:
        raise ValueError(
            f"M_dim is constant over the {n} checkpoints ({dim[0]!r}), so "
            "λ = std(M_inter − M_intra) / std(M_dim) is undefined; "
            "pass lam explicitly (lam=1.0 gives the official DSE)"
        )
    scale = float(np.max(np.abs(dim)))
    if dim_std <= M_DIM_NOISE * scale:
        raise ValueError(
            f"M_dim hardly varies over the {n} checkpoints (std {dim_std:.3g}, {dim_std / scale:.2g} of its size, "
            f"within the float32 rounding of the scores): λ = std(M_inter − M_intra) / std(M_dim) would "
            "weigh rounding noise; pass lam explicitly (lam=1.0 gives the official DSE)"
        )
    return float(np.std(inter - intra)) / dim_std


def dse_lambda(
    m_inter: Sequence[float], m_intra: Sequence[float], m_dim: Sequence[float], lam: float
) -> np.ndarray:
    """``DSE_λ = (M_inter − M_intra) + lam · M_dim`` per checkpoint, a float64 array of shape ``(n,)``.

    The inputs have shape ``(n,)`` (``n ≥ 1``, finite); ``lam`` is a finite number.
    """
    inter, intra, dim = _components(m_inter, m_intra, m_dim)
    lam = _check_lam(lam)
    return (inter - intra) + lam * dim


def _check_lam(lam: float) -> float:
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"lam must be a number, got {lam!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"lam must be finite, got {lam!r}")
    return value


def _check_count(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def local_maxima(values: Sequence[float], window: int = 2) -> list[int]:
    """Indices ``i`` with ``values[i] == max(values[max(0, i - window) : i + window + 1])``.

    ``values`` has shape ``(n,)`` (finite, in training order); ``window`` (an integer ≥ 0) is
    the number of neighbours on each side, the window being truncated at both ends. Every index
    of an equal-valued plateau that is the maximum of its window counts, so a plateau can give
    several candidates; ``window=0`` makes every index a local maximum. Returns increasing
    indices.
    """
    window = _check_count(window, "window", 0)
    array = _as_vector(values, "values")
    n = len(array)
    return [i for i in range(n) if array[i] == array[max(0, i - window) : i + window + 1].max()]


def _json_number(value: Any) -> Any:
    """``value`` as a plain Python number for JSON (NaN/Inf → None)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


@dataclass
class Selection:
    """The outcome of :func:`select_checkpoints`.

    ``lam``: the weight λ of ``M_dim``. ``rows``: the kept rows in training order (copies, each
    with an added ``dse_lambda``). ``candidates``: increasing indices into ``rows`` of the local
    maxima of DSE_λ. ``selected``: the best ``top`` candidates, best first. ``window`` and ``top``
    are the settings used. ``excluded``: checkpoints left out because their file name gives no
    place in training (``last.ckpt``) while others do.
    """

    lam: float
    rows: list[dict]
    candidates: list[int]
    selected: list[int]
    window: int
    top: int
    excluded: list[str] = dataclasses.field(default_factory=list)
    by: str = "dse_lambda"  # what was maximised: DSE_λ, or another score (then lam is NaN)

    @property
    def best(self) -> dict:
        """The row of the best checkpoint (the first selected one)."""
        return self.rows[self.selected[0]]

    def to_dict(self) -> dict:
        """A JSON-serialisable summary: λ, the settings, the selected rows and the candidates' names."""
        selected = []
        for rank, index in enumerate(self.selected, start=1):
            row = self.rows[index]
            entry: dict[str, Any] = {"rank": rank}
            entry.update({key: _json_number(row.get(key)) for key in _TABLE_FIELDS})
            entry["checkpoint"] = str(row.get("checkpoint"))
            selected.append(entry)
        for entry, index in zip(selected, self.selected):
            if self.by != "dse_lambda":
                entry["by_value"] = _json_number(self.rows[index].get("by_value"))
        return {
            "by": self.by,
            "lam": _json_number(self.lam),
            "window": self.window,
            "top": self.top,
            "selected": selected,
            "candidates": [str(self.rows[i].get("checkpoint")) for i in self.candidates],
            "excluded": list(self.excluded),
        }

    def format_table(self) -> str:
        """The selected checkpoints as an aligned plain-text table, under a line stating λ."""
        if self.by == "dse_lambda":
            header = ("rank", "checkpoint", "epoch", "step", "DSE_λ", "DSE", "M_inter", "M_intra", "M_dim")
            fields = _TABLE_FIELDS
        else:
            header = ("rank", "checkpoint", "epoch", "step", f"{self.by} (quality)", self.by)
            fields = ("checkpoint", "epoch", "step", "by_value", self.by)
        lines = [[str(rank)] + [_cell(self.rows[i].get(key)) for key in fields]
                 for rank, i in enumerate(self.selected, start=1)]
        widths = [max(len(text) for text in column) for column in zip(header, *lines)]

        def line(cells: Sequence[str]) -> str:
            # The checkpoint name (column 1) is left-aligned, numbers right-aligned.
            parts = [c.ljust(w) if k == 1 else c.rjust(w) for k, (c, w) in enumerate(zip(cells, widths))]
            return "  ".join(parts).rstrip()

        what = (f"λ = {self.lam:.6g} (DSE_λ = M_inter − M_intra + λ·M_dim)" if self.by == "dse_lambda"
                else f"by {self.by}")
        title = (
            f"{what}; top {len(self.selected)} of "
            f"{len(self.candidates)} local maxima (window {self.window}) over {len(self.rows)} checkpoints"
        )
        notes = []
        if self.excluded:
            notes.append(f"excluded (no epoch or step in the file name, so no known place in training): "
                         f"{', '.join(self.excluded)}")
        return "\n".join([title, line(header), *(line(cells) for cells in lines), *notes])


def _finite_component(row: Mapping, key: str) -> bool:
    value = row.get(key)
    if value is None:
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _usable_rows(rows: list[dict], needed: Sequence[str] = _NEEDED) -> list[dict]:
    """The rows whose ``needed`` columns are all finite; warns naming the others."""
    kept, dropped = [], []
    for position, row in enumerate(rows):
        if all(_finite_component(row, key) for key in needed):
            kept.append(row)
        else:
            dropped.append(str(row.get("checkpoint", f"row {position}")))
    if dropped:
        warnings.warn(
            f"dropping {len(dropped)} checkpoint(s) with a missing or non-finite {' or '.join(needed)}: "
            f"{', '.join(dropped)}",
            UserWarning,
            stacklevel=3,
        )
    return kept


def selection_quality(by: str) -> tuple[tuple[str, ...], Any]:
    """``(columns needed, row -> quality)`` for selecting by ``by``: a registered score (its
    :meth:`~dse_ext.scores.Score.value`) or a numeric column (its value)."""
    from .scores import _REGISTRY

    if not isinstance(by, str) or not by:
        raise ValueError(f"by must name a score or a column, got {by!r}")
    score = _REGISTRY.get(by)
    if score is not None:
        return score.columns[:1], score.value
    return (by,), lambda row: float(row[by])


def select_checkpoints(
    results: str | os.PathLike | Iterable[Mapping],
    *,
    top: int = 3,
    window: int = 2,
    lam: float | None = None,
    by: str | None = None,
) -> Selection:
    """Selects checkpoints of one training run by the local maxima of DSE_λ.

    ``results`` is a results CSV (a path, read with :func:`dse_ext.results.read_results`) or its
    rows (dicts with ``checkpoint``, ``epoch``, ``step``, ``m_inter``, ``m_intra``, ``m_dim``...).
    Rows with a missing or non-finite component are dropped with a ``UserWarning``; the rest are
    put in training order, numerically by epoch (or step) parsed from the file names
    (:func:`dse_ext.results.split_training_order`). Rows whose name gives no epoch (step) while
    others do — ``last.ckpt``, DINO's ``checkpoint.pth`` — are excluded with a ``UserWarning``
    and listed in ``Selection.excluded``; when no name is numbered, the given row order is taken as
    training order (with a ``UserWarning``). ``ValueError`` for a table that names one checkpoint
    twice, has two rows at the same epoch/step (two runs mixed), or mixes rows scored with
    different settings. ``lam`` defaults to
    :func:`paper_lambda` over those rows (which needs at least two, with ``M_dim`` not constant).
    Candidates are :func:`local_maxima` of DSE_λ with ``window`` neighbours on each side; the
    ``top`` (≥ 1) best, ties to the earlier checkpoint, are ``selected``.

    ``by`` (default ``"dse_lambda"``) selects by another score instead (see the module docs);
    rows lacking it are dropped with a ``UserWarning``, and a table without that column at all is
    refused naming the columns it has.
    """
    top = _check_count(top, "top", 1)
    window = _check_count(window, "window", 0)
    if isinstance(results, (str, os.PathLike)):
        rows = read_results(results)
    else:
        rows = [dict(row) for row in results]
    given = len(rows)
    _check_one_run(rows)
    by = "dse_lambda" if by is None else by
    if by == "dse_lambda":
        needed, quality = _NEEDED, None
    else:
        if lam is not None:
            raise ValueError(f"lam weighs M_dim in DSE_λ; it has no meaning when selecting by {by!r}")
        needed, quality = selection_quality(by)
        if rows and all(needed[0] not in row for row in rows):
            columns = sorted({k for row in rows for k, v in row.items() if isinstance(v, float)})
            raise ValueError(f"the table has no column {needed[0]!r} to select by; its score columns: {columns} "
                             "(add a score with dse score --scores)")
    numbered, unnumbered = split_training_order(_usable_rows(rows, needed))
    excluded: list[str] = []
    if numbered and unnumbered:
        excluded = [str(row.get("checkpoint")) for row in unnumbered]
        warnings.warn(f"excluded from selection, their file names give no {order_key(numbered)} so their place in "
                      f"training is unknown: {', '.join(excluded)}; rename them (e.g. checkpoint0100.pth) to "
                      "include them", UserWarning, stacklevel=2)
        rows = numbered
    elif unnumbered:
        if len(unnumbered) > 1:
            warnings.warn("no checkpoint name states an epoch or step: the rows' order in the table is taken "
                          "as training order", UserWarning, stacklevel=2)
        rows = unnumbered
    else:
        rows = numbered
    if not rows:
        raise ValueError(
            f"no checkpoint to select from: {given} row(s) given, none with finite {' and '.join(needed)}"
        )
    if quality is not None:
        values = _as_vector([quality(row) for row in rows], by)
        rows = [{**row, "by_value": float(v)} for row, v in zip(rows, values)]
        candidates = local_maxima(values, window)
        selected = sorted(candidates, key=lambda i: (-values[i], i))[:top]
        return Selection(lam=float("nan"), rows=rows, candidates=candidates, selected=selected, window=window,
                         top=top, excluded=excluded, by=by)
    if lam is None:
        if len(rows) < 2:
            raise ValueError(
                "λ = std(M_inter − M_intra) / std(M_dim) needs at least 2 checkpoints, got 1; "
                "pass lam explicitly (lam=1.0 gives the official DSE)"
            )
        lam = paper_lambda(*([row[key] for row in rows] for key in _NEEDED))
    lam = _check_lam(lam)
    scores = dse_lambda(*([row[key] for row in rows] for key in _NEEDED), lam)
    rows = [{**row, "dse_lambda": float(score)} for row, score in zip(rows, scores)]
    candidates = local_maxima(scores, window)
    selected = sorted(candidates, key=lambda i: (-scores[i], i))[:top]
    return Selection(lam=lam, rows=rows, candidates=candidates, selected=selected, window=window, top=top,
                     excluded=excluded)


def _check_one_run(rows: list[dict]) -> None:
    """Refuses a table that cannot be one run's: a checkpoint twice, two rows at one place in
    training, or rows scored with different settings."""
    seen: dict = {}
    for position, row in enumerate(rows):
        identity = row.get("file") or row.get("checkpoint")
        if identity in seen:
            raise ValueError(f"checkpoint {row.get('checkpoint')} appears twice (rows {seen[identity] + 1} and "
                             f"{position + 1}); a table holds one row per checkpoint: remove the duplicate")
        seen[identity] = position
    key = order_key(rows)
    places: dict = {}
    for row in rows:
        if key is not None and row.get(key) is not None:
            place = (row.get("epoch"), row.get("step"))
            if place in places:
                what = ", ".join(f"{k} {v}" for k, v in zip(("epoch", "step"), place) if v is not None)
                raise ValueError(f"{places[place]} and {row.get('checkpoint')} are both at {what}: is the table "
                                 "mixing two runs? Select from one run's table at a time")
            places[place] = row.get("checkpoint")
    with_settings = [row for row in rows if row.get("settings")]
    if with_settings and len(with_settings) != len(rows):
        raise ValueError("some rows have recorded settings and some do not: the table mixes rows of different "
                         "scoring runs")
    for row in with_settings[1:]:
        diff = settings_differences(with_settings[0]["settings"], row["settings"])
        if diff:
            name, a, b = diff[0]
            raise ValueError(f"rows were scored with different settings ({name}: {a!r} for "
                             f"{with_settings[0].get('checkpoint')}, {b!r} for {row.get('checkpoint')}); "
                             "select from rows scored one way")
