"""`dse compare`: rank correlations with a downstream metric, selections, gains and regrets."""

import csv
import json
import math

import numpy as np
import pytest

from dse_ext import cli
from dse_ext.compare import compare_scores, kendall_tau_b, spearman_rho
from dse_ext.results import write_results

scipy_stats = pytest.importorskip("scipy.stats")


def test_rank_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    for n in (3, 7, 20):
        x = rng.integers(0, 4, n).astype(float)  # many ties
        y = rng.normal(size=n)
        y[: n // 3] = y[0]
        assert kendall_tau_b(x, y) == pytest.approx(scipy_stats.kendalltau(x, y).statistic, abs=1e-12)
        assert spearman_rho(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic, abs=1e-12)
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3])) and math.isnan(spearman_rho([1, 2, 3], [5, 5, 5]))


MIOU = {"a": [0.30, 0.40, 0.50, 0.45, 0.35, 0.33], "b": [0.20, 0.25, 0.40, 0.42, 0.30, 0.28]}


def _run_rows(run):
    """A run whose M_inter follows the truth (DSE tracks it) and whose RankMe runs against it."""
    rows = []
    for epoch, miou in enumerate(MIOU[run]):
        rows.append({"checkpoint": f"{run}/checkpoint{epoch:04d}.pth", "epoch": epoch, "run": run,
                     "m_inter": 1.0 + miou, "m_intra": 0.5, "m_dim": 0.2 + 0.001 * epoch, "dse": 0.7 + miou,
                     "m_intra_image": 0.5, "m_intra_batch": 0.5, "avg_l2": 1.0, "rankme": 10.0 - 10 * miou})
    return rows


@pytest.fixture
def tables(tmp_path):
    results = tmp_path / "scores" / "results.csv"
    write_results(results, _run_rows("a") + _run_rows("b"))
    truth = tmp_path / "truth.csv"
    with open(truth, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["checkpoint", "miou"])
        for run, values in MIOU.items():
            for epoch, miou in enumerate(values):  # paths relative to the truth table's own folder
                writer.writerow([f"scores/{run}/checkpoint{epoch:04d}.pth", miou])
    return results, truth


def test_scores_tracking_the_truth_get_tau_one_and_select_its_peak(tables):
    results, truth = tables
    comparison = compare_scores(results, truth, bootstrap=200, seed=1)
    assert [r.name for r in comparison.runs] == ["a", "b"]
    a = {r.name: r for r in comparison.runs}["a"]
    assert a.scores["dse"]["tau"] == pytest.approx(1.0) and a.scores["rankme"]["tau"] == pytest.approx(-1.0)
    assert a.scores["dse"]["rho"] == pytest.approx(1.0)
    assert a.scores["dse"]["tau_low"] <= 1.0 <= a.scores["dse"]["tau_high"] + 1e-12
    # DSE picks the peak (epoch 2, 0.50): gain 0.50 - 0.33 over the last, no regret.
    assert a.scores["dse"]["selected_epoch"] == 2
    assert a.scores["dse"]["gain_vs_last"] == pytest.approx(0.17) and a.scores["dse"]["regret"] == pytest.approx(0)
    # The epoch number "selects" the last checkpoint (the end of a monotone score): no gain.
    assert a.scores["epoch"]["gain_vs_last"] == pytest.approx(0.0)
    assert comparison.summary["dse"]["runs"] == 2 and comparison.summary["dse"]["tau"] == pytest.approx(1.0)
    assert comparison.summary["rankme"]["tau"] == pytest.approx(-1.0)
    # Seeded: the same intervals again; DSE_λ is there (λ from each run's components).
    again = compare_scores(results, truth, bootstrap=200, seed=1)
    assert again.to_dict() == comparison.to_dict()
    assert "dse_lambda" in a.scores and math.isfinite(a.lam)


def test_truth_by_epoch_within_runs_and_unmatched_rows(tables, tmp_path):
    results, _ = tables
    truth = tmp_path / "by_epoch.csv"
    with open(truth, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "epoch", "acc"])
        for run, values in MIOU.items():
            for epoch, miou in enumerate(values[:-1]):  # the last epoch of each run has no number
                writer.writerow([run, epoch, miou])
        writer.writerow(["c", 0, 0.1])  # a run that was not scored
    with pytest.warns(UserWarning) as caught:
        comparison = compare_scores(results, truth, truth_column="acc", bootstrap=0)
    messages = " ".join(str(w.message) for w in caught)
    assert "no acc for 2 checkpoint(s)" in messages and "match no scored checkpoint" in messages
    assert all(len(r.rows) == 5 for r in comparison.runs)
    assert math.isnan(comparison.runs[0].scores["dse"]["tau_low"])  # bootstrap=0: no interval


def test_refusals(tables, tmp_path):
    results, truth = tables
    with pytest.raises(ValueError, match="no column 'acc'"):
        compare_scores(results, truth, truth_column="acc")
    few = tmp_path / "few.csv"
    few.write_text("checkpoint,miou\nscores/a/checkpoint0000.pth,0.1\nscores/a/checkpoint0001.pth,0.2\n")
    with pytest.raises(ValueError, match="run a has 2 checkpoint"):
        with pytest.warns(UserWarning):
            compare_scores(results, few)
    none = tmp_path / "none.csv"
    none.write_text("checkpoint,miou\nelsewhere.pth,0.1\n")
    with pytest.raises(ValueError, match="no checkpoint of the results has a miou"):
        with pytest.warns(UserWarning):
            compare_scores(results, none)


def test_cli_compare_writes_table_json_csv_and_plot(tables, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    results, truth = tables
    out = tmp_path / "out"
    out.mkdir()
    argv = ["compare", str(results), "--truth", str(truth), "--bootstrap", "50"]
    assert cli.main(argv + ["--json", str(out / "c.json"), "--csv", str(out / "c.csv"), "--plot",
                            str(out / "c.png")]) == 0
    text = capsys.readouterr().out
    assert "run a:" in text and "mean over 2 runs" in text and "dse_lambda" in text
    data = json.loads((out / "c.json").read_text())
    assert data["summary"]["dse"]["tau"] == pytest.approx(1.0)
    with open(out / "c.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["run"] for r in rows} == {"a", "b", "mean"} and (out / "c.png").stat().st_size > 0
    assert cli.main(argv + ["--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"]["a"]["checkpoints"] == 6
    assert cli.main(["compare", str(results), "--truth", str(tmp_path / "missing.csv")]) == 2


def test_extra_columns_and_a_score_missing_at_some_checkpoints(tables, tmp_path):
    results, _ = tables
    truth = tmp_path / "t.csv"
    with open(truth, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["checkpoint", "miou", "neg_train_loss"])
        for run, values in MIOU.items():
            for epoch, miou in enumerate(values):
                loss = "" if epoch == 0 else -epoch  # no loss at initialisation; then it falls
                writer.writerow([f"scores/{run}/checkpoint{epoch:04d}.pth", miou, loss])
    comparison = compare_scores(results, truth, bootstrap=0, extra_scores=["neg_train_loss"])
    a = comparison.runs[0]
    expected = kendall_tau_b([-1, -2, -3, -4, -5], MIOU["a"][1:])  # over the 5 checkpoints with a loss
    assert a.scores["neg_train_loss"]["tau"] == pytest.approx(expected)
    assert a.scores["neg_train_loss"]["selected_epoch"] == 1


def test_runs_named_by_numbers_match_across_tables(tmp_path):
    """Seeds as run names: the results table reads "1" as 1.0, the truth table keeps "1"."""
    rows = []
    for seed in (0, 1):
        for row in _run_rows("a"):
            rows.append({**row, "run": str(seed), "checkpoint": f"s{seed}/checkpoint{row['epoch']:04d}.pth"})
    write_results(tmp_path / "r.csv", rows)
    truth = tmp_path / "t.csv"
    with open(truth, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "epoch", "miou"])
        for seed in (0, 1):
            for epoch, miou in enumerate(MIOU["a"]):
                writer.writerow([seed, epoch, miou])
    comparison = compare_scores(tmp_path / "r.csv", truth, bootstrap=0)
    assert [r.name for r in comparison.runs] == ["0", "1"] and comparison.summary["dse"]["runs"] == 2
