"""The demo: SSL training pieces, Kendall τ, and the quick pipeline end to end (dse demo --quick)."""

import csv
import json

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("scipy")
pytest.importorskip("matplotlib")

from dse_ext import cli, load_weights  # noqa: E402
from dse_ext.demo import ssl  # noqa: E402
from dse_ext.demo.run import SCORES, kendall_tau  # noqa: E402


def test_kendall_tau_hand_cases():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one discordant pair of six: (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
    # non-finite pairs are left out; fewer than three pairs left gives NaN
    assert kendall_tau([1, 2, float("nan"), 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert kendall_tau([1, float("nan")], [1, 2]) != kendall_tau([1, float("nan")], [1, 2])  # NaN


def test_augment_is_seeded_and_normalized(gen):
    images = torch.randint(0, 256, (4, 3, 64, 64), generator=gen, dtype=torch.uint8)
    a = ssl.augment(images, torch.Generator().manual_seed(5))
    b = ssl.augment(images, torch.Generator().manual_seed(5))
    c = ssl.augment(images, torch.Generator().manual_seed(6))
    assert a.shape == (4, 3, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert -2.2 < a.min() and a.max() < 2.7  # ImageNet-normalized range


@pytest.mark.parametrize("method", ["dino", "mocov3"])
def test_training_is_seeded_leaves_the_global_rng_and_writes_loadable_checkpoints(tmp_path, gen, method):
    images = torch.randint(0, 256, (32, 3, 64, 64), generator=gen, dtype=torch.uint8)
    config = ssl.TrainConfig(epochs=1, batch_size=16, save_every=1, seed=3)
    state = torch.random.get_rng_state()
    first = ssl.train(method, images, tmp_path / "a", config, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = ssl.train(method, images, tmp_path / "b", config, progress=False)
    assert [p.name for p in first] == ["checkpoint0000.pth", "checkpoint0001.pth"]
    a, b = torch.load(first[-1]), torch.load(second[-1])
    assert a["train_loss"] == b["train_loss"] and torch.isfinite(torch.tensor(a["train_loss"]))
    key = "teacher" if method == "dino" else "state_dict"
    assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    # The backbone loads back through the library's layout detection.
    backbone = ssl.make_vit()
    report = load_weights(backbone, first[-1])
    assert report.ok and report.prefix == ("backbone." if method == "dino" else "module.base_encoder.")
    init = torch.load(first[0])
    assert not torch.equal(init[key][report.prefix + "pos_embed"], a[key][report.prefix + "pos_embed"])


def test_quick_demo_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "Kendall τ with val mIoU" in err and "report:" in err
    for name in ("report.md", "results.csv", "summary.json", "demo.png", "examples.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    runs = {r["run"] for r in rows}
    assert runs == {"dino", "mocov3", "dino+dse"}
    assert len(rows) == 3 * 3  # epochs 0, 1, 2 of each run
    for r in rows:
        for column in ("dse", "m_inter", "m_intra", "m_dim", "rankme", "dense_rankme", "alpha_req", "lidar",
                       "miou"):
            assert r[column] != "" and float(r[column]) == float(r[column]), column  # present, not NaN
        assert 0.0 <= float(r["miou"]) <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == runs and set(summary["runs"]["dino"]["tau"]) == set(SCORES)
    assert summary["regularization"]["regularized"] == "dino+dse"
    report = (out / "report.md").read_text()
    assert "## Kendall τ" in report and "## What this run shows" in report and "dino+dse" in report
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"
    # The report's τ come from the library's pipeline: dse compare on the files it leaves reproduces them.
    assert "dse compare scores.csv --truth truth.csv" in report
    assert cli.main(["compare", str(out / "scores.csv"), "--truth", str(out / "truth.csv"), "--extra",
                     "neg_train_loss", "--json", "-"]) == 0
    again = json.loads(capsys.readouterr().out)
    for run, data in summary["runs"].items():
        for score, tau in data["tau"].items():
            if tau is not None:
                assert again["runs"][run]["scores"][score]["tau"] == pytest.approx(tau), (run, score)
