"""A figure of one training run's DSE components and the checkpoints selected by DSE_λ.

Needs matplotlib (``pip install 'dse_ext[plot]'``). The figure is drawn on its own Agg canvas,
so neither pyplot's global state nor the session's backend is touched.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .selection import Selection, local_maxima, select_checkpoints, selection_quality

__all__ = ["plot_results"]

_COMPONENT_LINES = (("m_inter", "M_inter"), ("m_intra", "M_intra"), ("m_dim", "M_dim"), ("dse", "DSE (official)"))


def _import_matplotlib():
    """``(Figure, FigureCanvasAgg)``; ImportError with the install hint when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'dse_ext[plot]'") from e
    return Figure, FigureCanvasAgg


def _x_axis(rows: list[dict]) -> tuple[list[float], str]:
    """The x values and their label: epoch if every row has a distinct one, else step, else index."""
    for key in ("epoch", "step"):
        values = [row.get(key) for row in rows]
        if all(v is not None for v in values) and len(set(values)) == len(values):
            return [float(v) for v in values], key
    return [float(i) for i in range(len(rows))], "checkpoint index (training order)"


def _number(value) -> float:
    """``value`` as a float, NaN for a missing one (a gap in the line)."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def plot_results(
    results: str | os.PathLike | Iterable[Mapping],
    path: str | os.PathLike,
    *,
    selection: Selection | None = None,
    top: int = 3,
    window: int = 2,
    lam: float | None = None,
    scores: Sequence[str] | None = None,
) -> Path:
    """Plots a run's results table to ``path`` (format from its extension, PNG without one).

    Two panels share the x axis (epoch, else step, else the index in training order): the top
    one the components M_inter, M_intra, M_dim and the official DSE per checkpoint; the bottom
    one DSE_λ, its local maxima, and the selected checkpoints marked with their ranks, λ in its
    title. ``selection`` defaults to ``select_checkpoints(results, top=top, window=window,
    lam=lam)``; when given, its rows are plotted and ``results``, ``top``, ``window``, ``lam``
    are not used. ``scores`` (e.g. ``["rankme", "lidar"]``) adds a third panel: each score's
    quality (:mod:`dse_ext.scores`; standardised over the run, as their scales differ) with the
    checkpoint it selects (its top local maximum) marked. Parent directories are created.
    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    Figure, FigureCanvasAgg = _import_matplotlib()
    if selection is None:
        selection = select_checkpoints(results, top=top, window=window, lam=lam)
    rows = selection.rows
    x, x_label = _x_axis(rows)

    others = []
    for name in scores or ():
        needed, quality = selection_quality(name)
        values = [quality(row) if row.get(needed[0]) is not None else math.nan for row in rows]
        if not any(math.isfinite(v) for v in values):
            raise ValueError(f"the table has no values of {name!r} to plot (add it with dse score --scores {name})")
        others.append((name, values))

    figure = Figure(figsize=(8.0, 6.5 + 2.8 * bool(others)), layout="constrained")
    FigureCanvasAgg(figure)
    panels = figure.subplots(2 + bool(others), 1, sharex=True)
    components, scores_panel = panels[0], panels[1]

    for key, label in _COMPONENT_LINES:
        values = [_number(row.get(key)) for row in rows]
        if any(math.isfinite(v) for v in values):
            style = "--" if key == "dse" else "-"
            components.plot(x, values, style, marker=".", label=label)
    components.set_ylabel("value")
    components.set_title("DSE components per checkpoint")
    components.legend(loc="best", fontsize="small")
    components.grid(alpha=0.3)

    dse_lam = [row["dse_lambda"] for row in rows]
    scores_panel.plot(x, dse_lam, "-", marker=".", color="tab:purple", label="DSE_λ")
    if selection.candidates:
        scores_panel.plot([x[i] for i in selection.candidates], [dse_lam[i] for i in selection.candidates],
                    "o", markerfacecolor="none", color="tab:gray", label=f"local maxima (window {selection.window})")
    if selection.selected:
        scores_panel.plot([x[i] for i in selection.selected], [dse_lam[i] for i in selection.selected],
                    "*", markersize=14, color="tab:red", label="selected")
        for rank, i in enumerate(selection.selected, start=1):
            scores_panel.annotate(f"#{rank}", (x[i], dse_lam[i]), textcoords="offset points", xytext=(0, 9),
                            ha="center", fontsize="small", color="tab:red")
    scores_panel.set_title(f"DSE_λ = M_inter − M_intra + λ·M_dim, λ = {selection.lam:.4g}")
    scores_panel.set_ylabel("DSE_λ")
    scores_panel.legend(loc="best", fontsize="small")
    scores_panel.grid(alpha=0.3)
    scores_panel.margins(y=0.15)
    if others:
        panel = panels[2]
        for name, values in others:
            finite = [v for v in values if math.isfinite(v)]
            mean = sum(finite) / len(finite)
            spread = (sum((v - mean) ** 2 for v in finite) / len(finite)) ** 0.5 or 1.0
            z = [(v - mean) / spread for v in values]
            line, = panel.plot(x, z, "-", marker=".", label=name)
            kept = [i for i, v in enumerate(values) if math.isfinite(v)]
            peaks = [kept[j] for j in local_maxima([values[i] for i in kept], selection.window)]
            best = max(peaks, key=lambda i: (values[i], -i))
            panel.plot([x[best]], [z[best]], "*", markersize=12, color=line.get_color())
        panel.set_title("other scores (standardised quality; ★ the checkpoint each selects)")
        panel.set_ylabel("z-score")
        panel.legend(loc="best", fontsize="small")
        panel.grid(alpha=0.3)
    panels[-1].set_xlabel(x_label)
    return save_figure(figure, path)


def save_figure(figure, path: str | os.PathLike) -> Path:
    """Saves ``figure`` to ``path`` (format from its extension, PNG without one; parent folders
    created) and releases it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(path, format=None if path.suffix else "png", dpi=120)
    finally:
        figure.clear()
    return path
