"""The demo's verdicts: each conclusion of the report as one word, decided against the spread over seeds.

A training run on another CPU rounds differently and follows another trajectory, so a verdict that
rests on a mean of a few seeds can flip from one machine to the next. Each verdict here is
therefore one of three kinds:

* a **positive** one (``"degrades"``, ``"beats"``, ``"gains"``, ``"helps"``) only when the mean
  passes the report's threshold *and* the 95 % confidence interval of the mean over seeds
  (Student's t, n − 1 degrees of freedom) lies on the same side of zero;
* its **negative** counterpart (``"does not degrade"``, ``"loses to"``, ``"loses"``, ``"hurts"``,
  ``"no effect"``) under the mirror condition;
* **"not established"** otherwise: the seeds do not decide it.

Two runs of the demo *contradict* each other on a conclusion only when both give a definite verdict
and the two differ; ``"not established"`` contradicts nothing. :func:`contradictions` lists them, and
``python -m dse_ext.demo.verdicts A/summary.json B/summary.json`` prints the side-by-side table.

With one seed there is no interval: the verdict is the mean's against the threshold alone, and the
report says so.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Sequence

__all__ = ["CONFIDENCE", "NOT_ESTABLISHED", "interval", "effect", "degradation", "contradictions", "compare_table"]

CONFIDENCE = 0.95
NOT_ESTABLISHED = "not established"


def interval(s: dict) -> tuple[float, float] | None:
    """The two-sided :data:`CONFIDENCE` t-interval of the mean of a :func:`dse_ext.demo.report.stats`
    dict (``mean``, ``std``, ``n``); None below 2 values."""
    if not s or s.get("mean") is None or s.get("std") is None or s.get("n", 0) < 2:
        return None
    from scipy.stats import t

    half = float(t.ppf(0.5 + CONFIDENCE / 2, s["n"] - 1)) * s["std"] / math.sqrt(s["n"])
    return s["mean"] - half, s["mean"] + half


def effect(s: dict, threshold: float, words: Sequence[str]) -> str | None:
    """The verdict on a signed change (a selection gain, a regularizer's effect, a τ difference).

    ``words``: (up, down, none). *up* when the mean is above ``threshold`` and the interval above
    zero; *down* in the mirror case; *none* when the whole interval lies within ± ``threshold``;
    :data:`NOT_ESTABLISHED` otherwise. With one value, its sign against the threshold. None without
    a value.
    """
    up, down, none = words
    if not s or s.get("mean") is None:
        return None
    mean, ci = s["mean"], interval(s)
    if ci is None:
        return up if mean > threshold else down if mean < -threshold else none
    low, high = ci
    if mean > threshold and low > 0:
        return up
    if mean < -threshold and high < 0:
        return down
    if -threshold <= low and high <= threshold:
        return none
    return NOT_ESTABLISHED


def degradation(drop: float, drops_at_peak: dict, peak_is_early: bool, threshold: float) -> str:
    """The verdict on a configuration's dense degradation.

    ``drop``: the mean mIoU curve's peak minus its last value; ``drops_at_peak``: the stats of each
    seed's mIoU at that peak epoch minus its last (their mean is ``drop``). ``"early peak"`` when the
    peak lies in the first part of training (a failure to learn, not degradation); ``"degrades"``
    when ``drop`` is at least ``threshold`` and the interval of the seeds' drops lies above zero;
    ``"does not degrade"`` when the interval lies below ``threshold``; :data:`NOT_ESTABLISHED`
    otherwise. With one seed, ``drop`` against ``threshold`` alone.
    """
    if peak_is_early:
        return "early peak"
    ci = interval(drops_at_peak)
    if ci is None:
        return "degrades" if drop >= threshold else "does not degrade"
    low, high = ci
    if drop >= threshold and low > 0:
        return "degrades"
    if high < threshold:
        return "does not degrade"
    return NOT_ESTABLISHED


def contradictions(a: dict, b: dict) -> list[str]:
    """The conclusions (keys of two ``summary["verdicts"]``) on which both runs give a definite
    verdict and the verdicts differ."""
    return [k for k in a if k in b and NOT_ESTABLISHED not in (a[k], b[k]) and a[k] != b[k]]


def compare_table(a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> str:
    """A markdown table of two runs' verdicts on their shared conclusions, and the contradictions."""
    shared = [k for k in a if k in b]
    clash = set(contradictions(a, b))
    lines = [f"| conclusion | {names[0]} | {names[1]} | |", "|---|---|---|---|"]
    for k in shared:
        mark = "contradiction" if k in clash else "same" if a[k] == b[k] else "one undecided"
        lines.append(f"| {k} | {a[k]} | {b[k]} | {mark} |")
    lines += ["", f"{len(shared)} shared conclusions, {sum(a[k] == b[k] for k in shared)} the same, "
                  f"{len(clash)} contradicted."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2:
        print("usage: python -m dse_ext.demo.verdicts A/summary.json B/summary.json", file=sys.stderr)
        return 2
    runs = []
    for path in argv:
        try:
            with open(path) as f:
                summary = json.load(f)
        except (OSError, ValueError) as e:
            print(f"cannot read {path}: {e}", file=sys.stderr)
            return 2
        if not isinstance(summary, dict) or "verdicts" not in summary:
            print(f"{path} has no verdicts (a summary written before they existed): rebuild it with "
                  f"dse_ext.demo.run.rebuild_report", file=sys.stderr)
            return 2
        runs.append(summary["verdicts"])
    print(compare_table(*runs, names=tuple(argv)))
    return 1 if contradictions(*runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
