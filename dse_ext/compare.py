"""The evaluation protocol of label-free scores: how well each one tracks a downstream metric.

Given a results table (``dse score``) and the user's downstream numbers per checkpoint (a
``TRUTH.csv`` with, e.g., the mIoU of a linear probe), :func:`compare_scores` reports, for every
run and averaged over runs:

- **Kendall τ-b** and **Spearman ρ** of each score's quality (higher = predicted better, see
  :attr:`dse_ext.scores.Score.value`) with the truth over the run's checkpoints, each with a
  bootstrap 95 % interval (checkpoints resampled with replacement, ``bootstrap`` times, seeded);
  a score missing (or not finite) at some checkpoints is compared over the others (at least 3);
- the checkpoint each score **selects**: its top local maximum in training order (the paper's
  rule, :func:`dse_ext.selection.local_maxima` with ``window`` neighbours on each side; for DSE
  the λ form, DSE_λ), and the truth there against the last checkpoint (**gain**) and against the
  best one (**regret**).

Scores compared: DSE_λ (``dse_lambda``), every registered score whose columns the table has
(``dse``, ``rankme``, ``dense_rankme``, ``alpha_req`` as ``-|α - 1|``, ``lidar``, a user's own),
the components ``separability`` (M_inter − M_intra) and ``m_dim``, and the **epoch number** (a
score that only says "later is better": the baseline any label-free score has to beat).

Matching truth to checkpoints: by checkpoint file (the ``checkpoint`` column of both tables,
paths resolved against each table's folder, else the same file name when that is unique), or by
``epoch`` within a run when the truth table has no usable ``checkpoint``. Runs are told apart by
``run_column`` (default ``run``) in either table; without it the table is one run.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .results import read_results, split_training_order
from .selection import local_maxima, paper_lambda

__all__ = ["compare_scores", "Comparison", "RunComparison", "kendall_tau_b", "spearman_rho", "plot_comparison"]

BASELINE_SCORES = ("separability", "m_dim", "epoch")
# What each (run, score) entry holds.
FIELDS = ("tau", "tau_low", "tau_high", "rho", "rho_low", "rho_high", "selected", "selected_epoch",
          "selected_truth", "gain_vs_last", "regret")


# ---------------------------------------------------------------- rank correlations
def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b of two equal-length sequences (ties corrected); NaN when either is constant
    or shorter than 2."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    if n < 2:
        return float("nan")
    i, j = np.triu_indices(n, k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    concordance = float(np.sum(dx * dy))
    pairs_x, pairs_y = float(np.sum(dx != 0)), float(np.sum(dy != 0))
    if pairs_x == 0 or pairs_y == 0:
        return float("nan")
    return concordance / math.sqrt(pairs_x * pairs_y)


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), 1-based."""
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v), dtype=np.float64)
    sorted_v = v[order]
    start = 0
    while start < len(v):
        stop = start
        while stop + 1 < len(v) and sorted_v[stop + 1] == sorted_v[start]:
            stop += 1
        ranks[order[start:stop + 1]] = 0.5 * (start + stop) + 1.0
        start = stop + 1
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ (the Pearson correlation of average ranks); NaN when either is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float(np.sum(rx * rx)) * float(np.sum(ry * ry)))
    return float(np.sum(rx * ry)) / denominator if denominator > 0 else float("nan")


def _bootstrap(x: np.ndarray, y: np.ndarray, statistic, draws: int, rng: np.random.Generator) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles of ``statistic`` over ``draws`` resamples of the pairs."""
    if draws <= 0 or len(x) < 3:
        return float("nan"), float("nan")
    values = []
    for _ in range(draws):
        pick = rng.integers(0, len(x), len(x))
        values.append(statistic(x[pick], y[pick]))
    values = np.asarray(values)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


# ---------------------------------------------------------------- reading and matching
def _read_truth(path: str | os.PathLike, column: str) -> list[dict]:
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if column not in header:
                raise ValueError(f"{path}: no column {column!r} (its columns: {header}); name the metric's column "
                                 "with --truth-column")
            if "checkpoint" not in header and "epoch" not in header:
                raise ValueError(f"{path}: needs a 'checkpoint' or an 'epoch' column to match the results' rows")
            rows = []
            for raw in reader:
                try:
                    value = float(raw[column])
                except (TypeError, ValueError):
                    raise ValueError(f"{path}, line {reader.line_num}: {column} = {raw[column]!r} is not a number") \
                        from None
                rows.append({**raw, column: value})
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason}); save the table as UTF-8") from None
    return rows


def _run_key(value) -> str:
    """A run's name as text: ``1``, ``1.0`` and ``"1"`` name the same run (a results table reads
    numeric cells as numbers); ``""`` for none."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _epoch(value) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _attach_truth(rows: list[dict], results_dir: Path | None, truth: list[dict], truth_dir: Path | None,
                  column: str, run_column: str, extra: Sequence[str] = ()) -> list[dict]:
    """The results rows that have a truth value, each with ``truth`` set; warns about the others."""
    def resolved(name: str, base: Path | None) -> str:
        p = Path(name)
        return str((base / p).resolve() if base is not None and not p.is_absolute() else p.resolve())

    by_path, by_name, by_epoch = {}, {}, {}
    names_seen: dict[str, int] = {}
    for t in truth:
        run = _run_key(t.get(run_column))
        if t.get("checkpoint"):
            by_path[resolved(t["checkpoint"], truth_dir)] = t
            name = Path(t["checkpoint"]).name
            names_seen[name] = names_seen.get(name, 0) + 1
            by_name[name] = t
        epoch = _epoch(t.get("epoch"))
        if epoch is not None:
            by_epoch[(run, epoch)] = t
    matched, unmatched, used = [], [], set()
    for row in rows:
        name = str(row.get("checkpoint"))
        t = by_path.get(resolved(name, results_dir))
        if t is None and names_seen.get(Path(name).name) == 1:
            t = by_name[Path(name).name]
        if t is None and row.get("epoch") is not None:
            t = by_epoch.get((_run_key(row.get(run_column)), int(row["epoch"])))
        if t is None:
            unmatched.append(name)
            continue
        used.add(id(t))
        carried = {k: float(t[k]) for k in extra if row.get(k) is None and t.get(k) not in (None, "")}
        matched.append({**row, **carried, "truth": float(t[column]),
                        run_column: row.get(run_column) if row.get(run_column) not in (None, "") else t.get(run_column)})
    if unmatched:
        warnings.warn(f"no {column} for {len(unmatched)} checkpoint(s), left out: {', '.join(unmatched[:5])}"
                      + (" …" if len(unmatched) > 5 else ""), UserWarning, stacklevel=3)
    spare = [t.get("checkpoint") or f"epoch {t.get('epoch')}" for t in truth if id(t) not in used]
    if spare:
        warnings.warn(f"{len(spare)} row(s) of the truth table match no scored checkpoint: "
                      f"{', '.join(map(str, spare[:5]))}" + (" …" if len(spare) > 5 else ""), UserWarning, stacklevel=3)
    return matched


# ---------------------------------------------------------------- the comparison
def _score_functions(rows: list[dict], extra: Sequence[str] = ()) -> dict[str, Any]:
    """name -> row -> quality, for what the rows allow (in the order of the report)."""
    from .scores import _REGISTRY

    out: dict[str, Any] = {}
    if all(row.get(k) is not None for row in rows for k in ("m_inter", "m_intra", "m_dim")):
        out["dse_lambda"] = lambda row: row["dse_lambda"]
    for name, score in _REGISTRY.items():
        if all(row.get(c) is not None for row in rows for c in score.columns):
            out[name] = score.value
    if "dse_lambda" in out:
        out["separability"] = lambda row: row["m_inter"] - row["m_intra"]
        out["m_dim"] = lambda row: row["m_dim"]
    for name in extra:
        if any(row.get(name) is not None for row in rows):
            out[name] = lambda row, name=name: float(row[name]) if row.get(name) is not None else float("nan")
    if all(row.get("epoch") is not None for row in rows):
        out["epoch"] = lambda row: float(row["epoch"])
    return out


@dataclass
class RunComparison:
    """One run: its rows in training order (with ``truth`` and ``dse_lambda``), λ, and per score
    the fields of :data:`FIELDS`."""

    name: str
    rows: list[dict]
    lam: float
    scores: dict[str, dict] = field(default_factory=dict)

    @property
    def last(self) -> dict:
        return self.rows[-1]

    @property
    def best(self) -> dict:
        return max(self.rows, key=lambda r: r["truth"])


@dataclass
class Comparison:
    """The outcome of :func:`compare_scores`: per run, and ``summary`` (per score, over runs:
    mean and standard deviation of τ, mean ρ, mean gain and regret, number of runs)."""

    truth_column: str
    runs: list[RunComparison]
    summary: dict[str, dict]
    bootstrap: int
    window: int

    def to_dict(self) -> dict:
        def clean(v):
            if isinstance(v, float):
                return v if math.isfinite(v) else None
            return v

        return {
            "truth_column": self.truth_column, "bootstrap": self.bootstrap, "window": self.window,
            "summary": {s: {k: clean(v) for k, v in d.items()} for s, d in self.summary.items()},
            "runs": {r.name: {"lambda": clean(r.lam), "checkpoints": len(r.rows),
                              "last": {"checkpoint": r.last["checkpoint"], "truth": r.last["truth"]},
                              "best": {"checkpoint": r.best["checkpoint"], "truth": r.best["truth"]},
                              "scores": {s: {k: clean(v) for k, v in d.items()} for s, d in r.scores.items()}}
                     for r in self.runs},
        }

    def rows(self) -> list[dict]:
        """One row per (run, score), plus the averages (run ``"mean"``): the CSV's rows."""
        out = []
        for r in self.runs:
            for score, d in r.scores.items():
                out.append({"run": r.name, "score": score, **d})
        for score, d in self.summary.items():
            out.append({"run": "mean", "score": score, **d})
        return out

    def write_csv(self, path: str | os.PathLike) -> None:
        rows = self.rows()
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v)
                                 for k, v in row.items()})

    def format_table(self) -> str:
        def num(v, fmt="+.2f"):
            return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)

        lines = [f"{self.truth_column}: {len(self.runs)} run(s), {sum(len(r.rows) for r in self.runs)} checkpoints; "
                 f"τ/ρ with bootstrap 95% intervals ({self.bootstrap} resamples); selection = top local maximum "
                 f"(window {self.window})"]
        for r in self.runs:
            lines.append("")
            lines.append(f"run {r.name or '(one run)'}: last {r.last['checkpoint']} ({self.truth_column} "
                         f"{r.last['truth']:.4g}), best {r.best['checkpoint']} ({r.best['truth']:.4g})")
            header = ("score", "τ", "τ 95%", "ρ", "selects", self.truth_column, "gain vs last", "regret")
            table = [header]
            for score, d in r.scores.items():
                table.append((score, num(d["tau"]), f"[{num(d['tau_low'])}, {num(d['tau_high'])}]", num(d["rho"]),
                              str(d["selected"]) if d["selected"] is not None else "-",
                              num(d["selected_truth"], ".4g"), num(d["gain_vs_last"], "+.4g"),
                              num(d["regret"], ".4g")))
            lines += _aligned(table)
        if len(self.runs) > 1:
            lines.append("")
            lines.append(f"mean over {len(self.runs)} runs")
            table = [("score", "τ mean", "τ std", "ρ mean", "gain vs last", "regret")]
            for score, d in self.summary.items():
                table.append((score, num(d["tau"]), num(d["tau_std"], ".2f"), num(d["rho"]),
                              num(d["gain_vs_last"], "+.4g"), num(d["regret"], ".4g")))
            lines += _aligned(table)
        return "\n".join(lines)


def _aligned(table: list[tuple]) -> list[str]:
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    return ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            .rstrip() for row in table]


def _compare_run(name: str, rows: list[dict], window: int, draws: int, rng: np.random.Generator,
                 extra: Sequence[str] = ()) -> RunComparison:
    try:
        lam = paper_lambda([r["m_inter"] for r in rows], [r["m_intra"] for r in rows], [r["m_dim"] for r in rows])
    except (KeyError, TypeError, ValueError):
        lam = float("nan")
    rows = [{**r, "dse_lambda": (r["m_inter"] - r["m_intra"] + lam * r["m_dim"]) if math.isfinite(lam) else None}
            for r in rows]
    result = RunComparison(name, rows, lam)
    truth = np.asarray([r["truth"] for r in rows])
    last, best = rows[-1]["truth"], float(truth.max())
    for score, quality in _score_functions(rows, extra).items():
        if score == "dse_lambda" and not math.isfinite(lam):
            continue
        values = np.asarray([quality(r) for r in rows], dtype=np.float64)
        kept = np.flatnonzero(np.isfinite(values))  # a score missing at some checkpoints: over the others
        if len(kept) < 3:
            continue
        values, scored_truth = values[kept], truth[kept]
        tau, rho = kendall_tau_b(values, scored_truth), spearman_rho(values, scored_truth)
        tau_low, tau_high = _bootstrap(values, scored_truth, kendall_tau_b, draws, rng)
        rho_low, rho_high = _bootstrap(values, scored_truth, spearman_rho, draws, rng)
        candidates = local_maxima(values, window)
        pick = sorted(candidates, key=lambda i: (-values[i], i))[0]
        chosen = rows[int(kept[pick])]
        result.scores[score] = {
            "tau": tau, "tau_low": tau_low, "tau_high": tau_high, "rho": rho, "rho_low": rho_low,
            "rho_high": rho_high, "selected": chosen["checkpoint"], "selected_epoch": chosen.get("epoch"),
            "selected_truth": chosen["truth"], "gain_vs_last": chosen["truth"] - last, "regret": best - chosen["truth"],
        }
    return result


def compare_scores(results: str | os.PathLike | Iterable[Mapping], truth: str | os.PathLike | Iterable[Mapping], *,
                   truth_column: str = "miou", run_column: str = "run", window: int = 2, bootstrap: int = 1000,
                   seed: int = 0, extra_scores: Sequence[str] = ()) -> Comparison:
    """Kendall τ / Spearman ρ of every score with the truth, and what each score selects.

    Args:
        results: a results CSV (``dse score``) or its rows; several runs are told apart by
            ``run_column``.
        truth: a CSV (or rows) with the downstream metric per checkpoint: ``truth_column`` and a
            ``checkpoint`` (a path, as in the results, or the file name) or an ``epoch`` column
            (with ``run_column`` when there are several runs).
        truth_column: the metric's column (higher = better), default ``miou``.
        window: the local-maximum half window of the selection (default 2, as ``dse select``).
        bootstrap: resamples of the checkpoints for the 95 % intervals (0: none).
        seed: seeds the bootstrap (numpy's PCG64; torch's RNG is not touched).
        extra_scores: numeric columns of either table compared as scores too (higher = better),
            e.g. ``["neg_train_loss"]``.

    Returns:
        :class:`Comparison`. Runs with fewer than 3 checkpoints with a truth value are refused.
    """
    if not isinstance(bootstrap, int) or isinstance(bootstrap, bool) or bootstrap < 0:
        raise ValueError(f"bootstrap must be an integer >= 0, got {bootstrap!r}")
    if not isinstance(window, int) or isinstance(window, bool) or window < 0:
        raise ValueError(f"window must be an integer >= 0, got {window!r}")
    results_dir = Path(results).resolve().parent if isinstance(results, (str, os.PathLike)) else None
    rows = read_results(results) if isinstance(results, (str, os.PathLike)) else [dict(r) for r in results]
    truth_dir = Path(truth).resolve().parent if isinstance(truth, (str, os.PathLike)) else None
    truth_rows = _read_truth(truth, truth_column) if isinstance(truth, (str, os.PathLike)) else [dict(t) for t in truth]
    matched = _attach_truth(rows, results_dir, truth_rows, truth_dir, truth_column, run_column, extra_scores)
    if not matched:
        raise ValueError(f"no checkpoint of the results has a {truth_column} in the truth table: match them by "
                         "'checkpoint' (path or file name) or by 'epoch' (and the run column)")
    runs: dict[str, list[dict]] = {}
    for row in matched:
        runs.setdefault(_run_key(row.get(run_column)), []).append(row)
    rng = np.random.default_rng(seed)
    compared = []
    for name, run_rows in runs.items():
        numbered, unnumbered = split_training_order(run_rows)
        ordered = numbered + unnumbered if numbered and not unnumbered else (numbered or unnumbered)
        if numbered and unnumbered:
            warnings.warn(f"run {name or '(one run)'}: {len(unnumbered)} checkpoint(s) without an epoch or step in "
                          "their names are left out (their place in training is unknown)", UserWarning, stacklevel=2)
            ordered = numbered
        if len(ordered) < 3:
            raise ValueError(f"run {name or '(one run)'} has {len(ordered)} checkpoint(s) with a {truth_column}: "
                             "τ and a selection need at least 3")
        compared.append(_compare_run(name, ordered, window, bootstrap, rng, extra_scores))
    summary: dict[str, dict] = {}
    names = list(dict.fromkeys(s for r in compared for s in r.scores))
    for score in names:
        per_run = [r.scores[score] for r in compared if score in r.scores]
        taus = np.asarray([d["tau"] for d in per_run], dtype=np.float64)
        summary[score] = {
            "tau": float(np.nanmean(taus)) if np.any(np.isfinite(taus)) else float("nan"),
            "tau_std": float(np.nanstd(taus)) if np.sum(np.isfinite(taus)) > 1 else float("nan"),
            "rho": float(np.nanmean([d["rho"] for d in per_run])) if per_run else float("nan"),
            "gain_vs_last": float(np.mean([d["gain_vs_last"] for d in per_run])),
            "regret": float(np.mean([d["regret"] for d in per_run])),
            "runs": len(per_run),
        }
    return Comparison(truth_column, compared, summary, bootstrap, window)


def plot_comparison(comparison: Comparison, path: str | os.PathLike, scores: Sequence[str] | None = None) -> Path:
    """Scores (standardised per run) and the truth over training, one panel per run, each score's
    selection marked. Needs matplotlib (the ``plot`` extra); drawn on its own Agg canvas."""
    from .plotting import _import_matplotlib, save_figure

    Figure, FigureCanvasAgg = _import_matplotlib()
    runs = comparison.runs
    figure = Figure(figsize=(8.0, 3.2 * len(runs)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(runs), 1, squeeze=False)
    for ax, run in zip(axes[:, 0], runs):
        x = [r.get("epoch") if r.get("epoch") is not None else i for i, r in enumerate(run.rows)]
        functions = _score_functions(run.rows, [s for s in run.scores if s not in _score_functions(run.rows)])
        for score in [s for s in (scores or run.scores) if s in run.scores and s != "epoch"]:
            values = np.asarray([functions[score](r) for r in run.rows], dtype=np.float64)
            z = (values - values.mean()) / (values.std() or 1.0)
            line, = ax.plot(x, z, label=score, lw=1.2)
            pick = next(i for i, r in enumerate(run.rows) if r["checkpoint"] == run.scores[score]["selected"])
            ax.plot([x[pick]], [z[pick]], "o", color=line.get_color())
        truth = ax.twinx()
        truth.plot(x, [r["truth"] for r in run.rows], "k--", lw=2)
        truth.set_ylabel(f"{comparison.truth_column} (dashed)")
        ax.set_ylabel("score (standardised)")
        ax.set_title(f"run {run.name or '(one run)'}")
        ax.legend(fontsize="x-small", loc="upper left")
    axes[-1, 0].set_xlabel("epoch")
    return save_figure(figure, path)
