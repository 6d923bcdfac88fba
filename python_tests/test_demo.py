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
from dse_ext.demo import report as demo_report  # noqa: E402
from dse_ext.demo.run import SCORES, DemoConfig, RunSpec, kendall_tau, rebuild_report  # noqa: E402


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


@pytest.mark.parametrize("method", ["dino", "ibot", "mocov3"])
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
    key = "state_dict" if method == "mocov3" else "teacher"
    assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    # The backbone loads back through the library's layout detection.
    backbone = ssl.make_vit()
    report = load_weights(backbone, first[-1])
    assert report.ok and report.prefix == ("module.base_encoder." if method == "mocov3" else "backbone.")
    init = torch.load(first[0])
    assert not torch.equal(init[key][report.prefix + "pos_embed"], a[key][report.prefix + "pos_embed"])


def test_quick_demo_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "Kendall τ with val mIoU" in err and "What held, what did not" in err and "report:" in err
    # the elapsed time and its split by stage are printed
    assert all(f"{stage} " in err.split("report:")[-1] for stage in ("data", "train", "score", "probe"))
    for name in ("report.md", "results.csv", "per_seed.csv", "summary.json", "demo.png", "examples.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:6] == ["run", "method", "seed", "regularizer", "epoch", "miou"]
    runs = {r["run"] for r in rows}
    assert runs == {"dino", "mocov3", "dino+dse0.001"}
    assert {(r["run"], r["seed"]) for r in rows} == {(run, s) for run in runs for s in ("0", "1")}
    assert len(rows) == 3 * 2 * 3  # epochs 0, 1, 2 of each run and seed
    for r in rows:
        for column in ("dse", "m_inter", "m_intra", "m_dim", "rankme", "dense_rankme", "alpha_req", "lidar",
                       "miou"):
            assert r[column] != "" and float(r[column]) == float(r[column]), column  # present, not NaN
        assert 0.0 <= float(r["miou"]) <= 1.0
        assert float(r["regularizer"]) == (0.001 if r["run"] == "dino+dse0.001" else 0.0)
    # the seeds differ (init, batches, augmentations), so their scores do
    by = {(r["run"], r["seed"], r["epoch"]): float(r["dse"]) for r in rows}
    assert by[("dino", "0", "2")] != by[("dino", "1", "2")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "quick" and set(summary["configs"]) == runs
    dino = summary["configs"]["dino"]
    assert set(dino["tau"]) == set(SCORES) and dino["seeds"] == [0, 1]
    for score, s in dino["tau"].items():
        finite = [v for v in s["values"] if v is not None]
        if len(finite) == 2:
            assert s["mean"] == pytest.approx(sum(finite) / 2) and s["std"] is not None
    assert [r["regularized"] for r in summary["regularization"]] == ["dino+dse0.001"]
    assert summary["regularization"][0]["plain"] == "dino"
    with open(out / "per_seed.csv", newline="") as f:
        per_seed = list(csv.DictReader(f))
    assert len(per_seed) == 3 * 2 * len(SCORES)
    report = (out / "report.md").read_text()
    assert "## What held" in report and "## Kendall τ" in report and "dino+dse0.001" in report
    assert "reduced against `dse demo --full`" in report
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"
    # the report and figure can be written again from the run's files alone
    (out / "report.md").unlink()
    (out / "demo.png").unlink()
    rebuild_report(out)
    assert (out / "report.md").read_text() == report and (out / "demo.png").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text())["verdicts"] == summary["verdicts"]
    # a summary written before the verdicts existed gets them derived again, the same
    old = json.loads((out / "summary.json").read_text())
    for key in ("verdicts", "findings"):
        del old[key]
    for c in old["configs"].values():
        del c["seed_drop_at_peak"], c["degradation"]
    (out / "summary.json").write_text(json.dumps(old))
    rebuild_report(out)
    assert (out / "report.md").read_text() == report
    assert json.loads((out / "summary.json").read_text())["verdicts"] == summary["verdicts"]
    assert "## Verdicts" in report and all(f"| {k} | {v} |" in report for k, v in summary["verdicts"].items())
    # The per-seed τ come from the library's pipeline: dse compare on the files it leaves reproduces them.
    assert "dse compare scores.csv --truth truth.csv" in report
    assert cli.main(["compare", str(out / "scores.csv"), "--truth", str(out / "truth.csv"), "--extra",
                     "neg_train_loss", "--json", "-"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert set(again["runs"]) == set(summary["trajectories"])
    for run, data in summary["trajectories"].items():
        for score, tau in data["tau"].items():
            if tau is not None:
                assert again["runs"][run]["scores"][score]["tau"] == pytest.approx(tau), (run, score)


def test_demo_configurations():
    full, default = DemoConfig.full(), DemoConfig()
    assert len(full.seeds) >= 3 and RunSpec("dino", 1e-3) in full.runs and RunSpec("dino") in full.runs
    assert len({r.dse_weight for r in full.runs if r.dse_weight}) >= 2  # a β sweep
    assert RunSpec("dino", 1e-3) in default.runs and RunSpec("dino") in default.runs
    assert full.reduced() is None and default.reduced()  # the default says what it leaves out
    assert f"1 seed per configuration instead of {len(full.seeds)}" in default.reduced()
    # the modes train the same regime: only seeds, configurations (and nothing else) differ
    assert (default.epochs, default.lr, default.schedule, default.vit) == (full.epochs, full.lr, full.schedule, full.vit)
    same_data = ("num_train", "pretrain_images", "num_classes", "class_colour", "colour_pairs", "data_seed")
    assert all(getattr(default, k) == getattr(full, k) for k in same_data)
    assert default.pretrain_count == 400 < default.num_train and DemoConfig.quick().pretrain_count == 96
    with pytest.raises(ValueError, match="pretrain_images"):
        DemoConfig(pretrain_images=0).validate()
    with pytest.raises(ValueError, match="pretrain_images"):
        DemoConfig(num_train=300, probe_train=300).validate()  # 400 pre-training scenes of 300
    with pytest.raises(ValueError, match="distinct"):
        DemoConfig(seeds=(0, 0)).validate()
    with pytest.raises(ValueError, match="unknown method"):
        DemoConfig(runs=(RunSpec("byol"),)).validate()
    with pytest.raises(ValueError, match="dse_weight"):
        DemoConfig(runs=(RunSpec("dino", float("nan")),)).validate()
    with pytest.raises(ValueError, match="probe_train"):
        DemoConfig(num_train=10, probe_train=20).validate()


def test_demo_cli_rejects_bad_seeds(capsys):
    for bad in ("0,0", "a", "-1"):
        with pytest.raises(SystemExit) as e:
            cli.main(["demo", "--seeds", bad, "--out", "unused"])
        assert e.value.code == 2
        assert "--seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["demo", "--full", "--quick"])


def _trajectory(taus: dict, gain: float, selected: int) -> dict:
    return {"tau": taus, "selection_by_score": {"dse_lambda": {"gain_vs_last": gain}}, "selected_epoch": selected,
            "lambda": 1.0}


def _curve(values, epochs=None):
    epochs = epochs or list(range(0, 10 * len(values), 10))
    return [{"epoch": e, "miou": v} for e, v in zip(epochs, values)]


def test_degradation_is_judged_on_the_mean_curve_with_the_early_peak_excluded():
    taus = {s: 0.0 for s in SCORES}
    traj = {s: _trajectory(taus, 0.01 * (s + 1), 20) for s in (0, 1, 2)}
    # peak at epoch 30 of 90 in every seed, last 0.03 below on average and every seed falls: degradation
    rows = {0: _curve([0.10, 0.15, 0.20, 0.25, 0.24, 0.23, 0.22, 0.21, 0.21, 0.21]),
            1: _curve([0.10, 0.15, 0.20, 0.25, 0.25, 0.24, 0.23, 0.23, 0.23, 0.23]),
            2: _curve([0.10, 0.15, 0.20, 0.25, 0.25, 0.24, 0.23, 0.22, 0.22, 0.22])}
    c = demo_report.summarise_config("dino", "dino", 0.0, 90, traj, rows)
    assert c["peak_epoch"] == 30 and c["peak_miou"] == pytest.approx(0.25)
    assert c["last_miou"] == pytest.approx(0.22) and c["drop"] == pytest.approx(0.03)
    assert c["degradation"] == "degrades" and c["degraded"]
    assert c["seed_drop"]["values"] == pytest.approx([0.04, 0.02, 0.03])
    # the drops at the mean curve's peak epoch average to the mean curve's drop
    assert c["seed_drop_at_peak"]["mean"] == pytest.approx(c["drop"])
    assert c["gain_vs_last"]["dse_lambda"]["mean"] == pytest.approx(0.02)
    assert c["gain_vs_last"]["dse_lambda"]["std"] == pytest.approx(0.01)
    # a mean drop of 0.03 made of one seed falling by 0.09 and two holding: not established, not "degrades"
    spread = {0: _curve([0.1, 0.3, 0.21]), 1: _curve([0.1, 0.3, 0.30]), 2: _curve([0.1, 0.3, 0.30])}
    c = demo_report.summarise_config("d", "dino", 0.0, 20, traj, spread)
    assert c["drop"] == pytest.approx(0.03) and c["degradation"] == "not established" and not c["degraded"]
    # a drop of 0.015 is not degradation; with the seeds agreeing it is ruled out
    shallow = {s: _curve([0.10, 0.2, 0.2, 0.2, 0.185 + 0.001 * s]) for s in (0, 1, 2)}
    assert demo_report.summarise_config("d", "dino", 0.0, 40, traj, shallow)["degradation"] == "does not degrade"
    # a peak in the first 10 % of training (epoch 0: collapse) is not degradation, however deep the fall
    collapse = {s: _curve([0.10, 0.06, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]) for s in (0, 1, 2)}
    c = demo_report.summarise_config("d", "dino", 0.0, 100, traj, collapse)
    assert c["peak_is_early"] and c["degradation"] == "early peak" and not c["degraded"]
    # one seed degrading and one rising: judged on the mean curve
    mixed = {0: _curve([0.1, 0.3, 0.2, 0.2]), 1: _curve([0.1, 0.1, 0.2, 0.3])}
    c = demo_report.summarise_config("d", "dino", 0.0, 30, {0: traj[0], 1: traj[1]}, mixed)
    assert c["drop"] == pytest.approx(0.0) and not c["degraded"]
    # one seed: the definition alone, no interval
    c = demo_report.summarise_config("d", "dino", 0.0, 90, {0: traj[0]}, {0: rows[0]})
    assert c["degradation"] == "degrades" and c["seed_drop_at_peak"]["std"] is None


def _regularized(last_plain, last_reg):
    taus = {s: 0.1 for s in SCORES}
    seeds = range(len(last_plain))
    traj = {s: _trajectory(taus, 0.0, 10) for s in seeds}
    plain = {s: _curve([0.1, 0.3, v]) for s, v in zip(seeds, last_plain)}
    reg = {s: _curve([0.1, 0.3, v]) for s, v in zip(seeds, last_reg)}
    configs = {"dino": demo_report.summarise_config("dino", "dino", 0.0, 20, traj, plain),
               "dino+dse0.001": demo_report.summarise_config("dino+dse0.001", "dino", 1e-3, 20, traj, reg)}
    (effect,) = demo_report.summarise_regularization(configs, {"dino": plain, "dino+dse0.001": reg})
    summary = {"configs": configs, "regularization": [effect]}
    line = next(t for t in demo_report.findings(summary) if t.startswith("The regularizer"))
    return effect, demo_report.verdicts(summary)["regularizer β=0.001 on dino"], line


def test_regularizer_effect_is_paired_by_seed_and_worded_with_its_spread():
    effect, verdict, line = _regularized([0.20, 0.22, 0.24], [0.25, 0.26, 0.23])
    assert effect["beta"] == 1e-3 and effect["plain"] == "dino"
    assert effect["last_change"]["values"] == pytest.approx([0.05, 0.04, -0.01])
    assert effect["peak_change"]["mean"] == pytest.approx(0.0)
    # +0.027 on average, but one seed of three went down: the seeds do not decide it
    assert verdict == "not established" and "**not established** either way" in line
    assert "2 up, 1 down of 3 seeds" in line and "95% interval [" in line
    # paired by seed: a consistent gain of about 0.02 helps, whatever the spread between the seeds' levels
    effect, verdict, line = _regularized([0.15, 0.20, 0.25], [0.17, 0.225, 0.27])
    assert verdict == "helps" and "helps" in line
    effect, verdict, _ = _regularized([0.17, 0.225, 0.27], [0.15, 0.20, 0.25])
    assert verdict == "hurts"
    # a change whose whole interval lies within ±0.005 is no effect
    effect, verdict, line = _regularized([0.20, 0.21, 0.22], [0.201, 0.212, 0.22])
    assert verdict == "no effect" and "has no effect" in line


def test_findings_say_when_dse_loses_to_a_baseline_or_nothing_degrades():
    taus = {**{k: 0.2 for k in SCORES}, "dse_lambda": 0.5}
    traj = {s: _trajectory({**taus, "epoch": 0.8 + 0.01 * s}, -0.02 - 0.001 * s, 10) for s in (0, 1, 2)}
    rows = {s: _curve([0.1, 0.2, 0.3]) for s in (0, 1, 2)}
    configs = {"dino": demo_report.summarise_config("dino", "dino", 0.0, 20, traj, rows)}
    summary = {"configs": configs, "regularization": []}
    text = demo_report.findings(summary)
    assert any("Dense degradation is not shown" in t for t in text)
    line = next(t for t in text if t.startswith("On dino, DSE_λ"))
    assert "loses to epoch number" in line and "beats RankMe" in line
    assert any("Selection by DSE_λ's top local maximum on dino loses" in t for t in text)
    v = demo_report.verdicts(summary)
    assert v["τ on dino: DSE_λ vs epoch number"] == "loses to" and v["τ on dino: DSE_λ vs LiDAR"] == "beats"
    assert v["degradation of dino"] == "does not degrade" and v["selection by DSE_λ on dino"] == "loses"
    # one seed: said up front
    one = {"configs": {"dino": demo_report.summarise_config("dino", "dino", 0.0, 20, {0: traj[0]}, {0: rows[0]})}}
    assert demo_report.findings(one)[0].startswith("**One seed per configuration**")


def test_momentum_schedules_and_pooling():
    assert ssl._momentum(0.99, 0.0, "cosine") == pytest.approx(0.99)
    assert ssl._momentum(0.99, 1.0, "cosine") == pytest.approx(1.0)
    assert ssl._momentum(0.99, 0.7, "constant") == 0.99
    backbone = ssl.make_vit(ssl.ViTConfig(embed_dim=32, depth=1, num_heads=2))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cls, patches = ssl._tokens(backbone, x, "cls")
    mean, same = ssl._tokens(backbone, x, "mean")
    assert torch.equal(patches, same) and patches.shape == (2, 64, 32)
    assert torch.allclose(mean, patches.mean(1)) and not torch.allclose(cls, mean)
    with pytest.raises(ValueError, match="pool"):
        ssl.DINO(backbone, torch.Generator(), pool="max")
    with pytest.raises(ValueError, match="momentum_schedule"):
        ssl.MoCoV3(backbone, torch.Generator(), momentum_schedule="linear")


def test_constant_schedule_keeps_the_learning_rate_after_warm_up(tmp_path, gen):
    images = torch.randint(0, 256, (16, 3, 64, 64), generator=gen, dtype=torch.uint8)
    seen = {}
    for schedule in ("constant", "cosine"):
        lrs = []
        original = torch.optim.AdamW.step

        def spy(self, *args, **kwargs):
            lrs.append(self.param_groups[0]["lr"])
            return original(self, *args, **kwargs)

        torch.optim.AdamW.step = spy
        try:
            ssl.train("dino", images, tmp_path / schedule, ssl.TrainConfig(epochs=4, batch_size=8, warmup_epochs=1,
                                                                           schedule=schedule, lr=1e-3),
                      ssl.ViTConfig(embed_dim=32, depth=1, num_heads=2), progress=False)
        finally:
            torch.optim.AdamW.step = original
        seen[schedule] = lrs
    assert seen["constant"][:2] == pytest.approx([5e-4, 1e-3]) and seen["constant"][2:] == pytest.approx([1e-3] * 6)
    assert seen["cosine"][1] == pytest.approx(1e-3) and seen["cosine"][-1] < 1e-4


def test_multi_crop_views_and_the_dino_loss_over_them(gen):
    images = torch.randint(0, 256, (4, 3, 64, 64), generator=gen, dtype=torch.uint8)
    views = ssl.multi_crop(images, torch.Generator().manual_seed(1), 3)
    assert [tuple(v.shape) for v in views] == [(4, 3, 64, 64)] * 2 + [(4, 3, 32, 32)] * 3
    # the two global views are what two_views draws first from the same generator
    first = ssl.two_views(images, torch.Generator().manual_seed(1))
    assert torch.equal(views[0], first[0]) and torch.equal(views[1], first[1])
    model = ssl.DINO(ssl.make_vit(ssl.ViTConfig(embed_dim=32, depth=1, num_heads=2)), torch.Generator().manual_seed(0))
    loss_global, patches = model(views[:2])
    model.center.zero_()
    loss_all, patches_all = model(views)
    assert patches.shape == patches_all.shape == (8, 64, 32)  # the regularizer sees the global views only
    assert torch.isfinite(loss_all) and loss_all.item() != pytest.approx(loss_global.item())
    loss_all.backward()
    assert model.student.patch_embed.proj.weight.grad is not None


def test_ibot_masks_patches_and_adds_a_patch_loss(gen):
    vit = ssl.ViTConfig(embed_dim=32, depth=1, num_heads=2)
    images = torch.randint(0, 256, (4, 3, 64, 64), generator=gen, dtype=torch.uint8)
    views = ssl.two_views(images, torch.Generator().manual_seed(2))
    backbone = ssl.make_vit(vit)
    x = torch.cat(views)
    none = torch.zeros(8, 64, dtype=torch.bool)
    token = torch.full((32,), 3.0)
    assert torch.equal(ssl._masked_features(backbone, x, none, token), backbone.forward_features(x))
    some = none.clone()
    some[0, :10] = True
    masked = ssl._masked_features(backbone, x, some, token)
    assert not torch.equal(masked[0], backbone.forward_features(x)[0])
    assert torch.equal(masked[1:], backbone.forward_features(x)[1:])  # other images untouched
    # without masks iBOT is DINO: same init from the same generator, same loss
    dino = ssl.DINO(ssl.make_vit(vit, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1))
    ibot = ssl.IBOT(ssl.make_vit(vit, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1),
                    mask_fraction=0.0)
    assert ibot(views)[0].item() == pytest.approx(dino(views)[0].item(), rel=1e-6)
    # with masks the patch loss is added and trains the mask token
    ibot = ssl.IBOT(ssl.make_vit(vit, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1),
                    mask_fraction=1.0)
    loss, patches = ibot(views)
    assert patches.shape == (8, 64, 32) and loss.item() > dino(views)[0].item()
    loss.backward()
    assert ibot.mask_token.grad is not None and ibot.mask_token.grad.abs().sum() > 0


def test_demo_numbers_do_not_depend_on_the_worker_count(tmp_path):
    """Every trajectory runs on one torch thread, in this process or in a worker: same rows."""
    from dse_ext.demo.run import run_demo

    config = DemoConfig.quick()
    config = DemoConfig(**{**config.__dict__, "runs": (RunSpec("dino"), RunSpec("dino", 1e-3)), "seeds": (0, 1)})
    one = run_demo(tmp_path / "one", config, progress=False, workers=1)
    two = run_demo(tmp_path / "two", config, progress=False, workers=2)
    assert one["trajectories"].keys() == two["trajectories"].keys()
    for name in one["trajectories"]:  # (json: NaN, a score without 3 finite points, compares equal)
        assert json.dumps(one["trajectories"][name]["tau"]) == json.dumps(two["trajectories"][name]["tau"]), name
    rows = [(tmp_path / d / "results.csv").read_text() for d in ("one", "two")]
    assert rows[0] == rows[1]


def test_readme_and_docs_show_the_committed_full_run():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    summary = json.loads((root / "docs" / "demo" / "summary.json").read_text())
    assert summary["mode"] == "full" and all(len(c["seeds"]) >= 3 for c in summary["configs"].values())
    assert demo_report.tau_table(summary) in (root / "README.md").read_text()
    assert (root / "docs" / "demo" / "report.md").read_text() == demo_report.report_markdown(summary)
    with open(root / "docs" / "demo" / "results.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[:6] == ["run", "method", "seed", "regularizer", "epoch", "miou"]
    assert {"dse", "dse_lambda", "rankme", "dense_rankme", "alpha_req", "lidar"} <= set(header)
