"""The demo's verdicts: intervals over seeds, the three kinds of verdict, and comparing two runs."""

import json
import math

import pytest

pytest.importorskip("scipy")

from dse_ext.demo import verdicts as V  # noqa: E402
from dse_ext.demo.report import stats  # noqa: E402

WORDS = ("gains", "loses", "no effect")


def test_interval_is_students_t_over_the_seeds():
    from scipy.stats import t

    # two seeds: mean 0.5, std 1/sqrt(2), so the half-width is t(0.975, 1) * 0.5 = 6.3531
    low, high = V.interval(stats([0.0, 1.0]))
    assert (low + high) / 2 == pytest.approx(0.5) and (high - low) / 2 == pytest.approx(6.35310, abs=1e-4)
    values = [0.021, 0.034, 0.018, 0.040, 0.027]
    s = stats(values)
    expected = t.interval(0.95, len(values) - 1, loc=s["mean"], scale=s["std"] / math.sqrt(len(values)))
    assert V.interval(s) == pytest.approx(expected)
    # below two values there is none; undefined values are left out first
    assert V.interval(stats([0.3])) is None and V.interval(stats([])) is None
    assert V.interval(stats([0.1, None, float("nan"), 0.2])) == pytest.approx(V.interval(stats([0.1, 0.2])))


def test_effect_needs_the_threshold_and_the_interval():
    assert V.effect(stats([0.020, 0.022, 0.024]), 0.005, WORDS) == "gains"
    assert V.effect(stats([-0.020, -0.022, -0.024]), 0.005, WORDS) == "loses"
    # mean above the threshold but one seed the other way: the seeds do not decide it
    assert V.effect(stats([0.05, 0.04, -0.01]), 0.005, WORDS) == V.NOT_ESTABLISHED
    # the interval is above zero but the mean is not above the threshold: not a gain, and not ruled out
    assert V.effect(stats([0.003, 0.006, 0.004, 0.007]), 0.005, WORDS) == V.NOT_ESTABLISHED
    # a real but negligible change (the whole interval above zero and within the threshold): no effect
    assert V.effect(stats([0.004, 0.0045, 0.0042, 0.0041]), 0.005, WORDS) == "no effect"
    # the whole interval within ± threshold: no effect; a point at zero (every seed the same) too
    assert V.effect(stats([0.001, -0.001, 0.0, 0.0005]), 0.005, WORDS) == "no effect"
    assert V.effect(stats([0.0, 0.0, 0.0]), 0.005, WORDS) == "no effect"
    # one value: its sign against the threshold; none: no verdict
    assert V.effect(stats([0.01]), 0.005, WORDS) == "gains"
    assert V.effect(stats([0.001]), 0.005, WORDS) == "no effect"
    assert V.effect(stats([None]), 0.005, WORDS) is None


def test_degradation_verdicts():
    falls = stats([0.03, 0.025, 0.035])
    assert V.degradation(0.03, falls, False, 0.02) == "degrades"
    assert V.degradation(0.03, falls, True, 0.02) == "early peak"
    # a mean drop of 0.02 or more carried by one seed
    assert V.degradation(0.03, stats([0.09, 0.0, 0.0]), False, 0.02) == V.NOT_ESTABLISHED
    # the interval below the threshold rules it out; an interval across it leaves it open
    assert V.degradation(0.005, stats([0.004, 0.006, 0.005]), False, 0.02) == "does not degrade"
    assert V.degradation(0.015, stats([0.0, 0.015, 0.03]), False, 0.02) == V.NOT_ESTABLISHED
    # one seed: the definition alone
    assert V.degradation(0.021, stats([0.021]), False, 0.02) == "degrades"
    assert V.degradation(0.019, stats([0.019]), False, 0.02) == "does not degrade"


def test_contradictions_are_definite_verdicts_that_differ():
    a = {"x": "gains", "y": "degrades", "z": V.NOT_ESTABLISHED, "w": "helps", "only in a": "beats"}
    b = {"x": "no effect", "y": "degrades", "z": "loses", "w": V.NOT_ESTABLISHED}
    assert V.contradictions(a, b) == ["x"]
    table = V.compare_table(a, b, ("one", "two"))
    assert "| x | gains | no effect | contradiction |" in table and "| y | degrades | degrades | same |" in table
    assert "| z | not established | loses | one undecided |" in table and "only in a" not in table
    assert "4 shared conclusions, 1 the same, 1 contradicted." in table


def test_command_line_compares_two_summaries(tmp_path, capsys):
    paths = []
    for name, verdicts in (("a", {"x": "gains", "y": "degrades"}), ("b", {"x": V.NOT_ESTABLISHED, "y": "degrades"}),
                           ("c", {"x": "loses", "y": "degrades"})):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"verdicts": verdicts}))
        paths.append(str(path))
    assert V.main(paths[:2]) == 0
    assert "0 contradicted" in capsys.readouterr().out
    assert V.main([paths[0], paths[2]]) == 1
    assert "| x | gains | loses | contradiction |" in capsys.readouterr().out
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"configs": {}}))
    assert V.main([paths[0], str(old)]) == 2 and "rebuild" in capsys.readouterr().err
    assert V.main([paths[0]]) == 2
    assert V.main([paths[0], str(tmp_path / "missing.json")]) == 2 and "cannot read" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert V.main([paths[0], str(tmp_path / "bad.json")]) == 2 and "cannot read" in capsys.readouterr().err


def test_committed_cross_check_contradicts_no_verdict_of_the_committed_run():
    """docs/demo/cross_check.md: the 5-seed run on other instruction paths against the committed
    full run; both summaries' verdicts follow from their numbers, and none is contradicted."""
    from pathlib import Path

    from dse_ext.demo import report

    docs = Path(__file__).resolve().parents[1] / "docs" / "demo"
    runs = [json.loads((docs / name).read_text()) for name in ("summary.json", "cross_check_summary.json")]
    for summary in runs:
        assert report.verdicts(summary) == summary["verdicts"]
    shared = set(runs[0]["verdicts"]) & set(runs[1]["verdicts"])
    assert len(shared) == 10
    assert V.contradictions(runs[0]["verdicts"], runs[1]["verdicts"]) == []
    assert V.main([str(docs / "summary.json"), str(docs / "cross_check_summary.json")]) == 0
