"""The demo pipeline: data → SSL runs → label-free scores and dense ground truth → report.

:func:`run_demo` makes the synthetic dataset, pre-trains a small ViT with DINO, with MoCo v3 and
with DINO + the DSE regularizer (``loss − β·DSE``), then scores every saved checkpoint without
labels through the library's own pipeline — :func:`dse_ext.score_checkpoints` with the scores
registry (DSE, RankMe, dense RankMe, α-ReQ, LiDAR), what ``dse score --scores`` runs — and
measures the val mIoU of a linear probe on frozen patch tokens (labels). The τ of each score
with mIoU and what each score selects come from :func:`dse_ext.compare.compare_scores`, what
``dse compare`` runs; the report also compares the regularized run with the plain one. Nothing
is tuned on the validation masks: the probe is trained on train masks only and the val masks are
used only to measure. ``scores.csv`` and ``truth.csv`` in the output folder reproduce the
comparison with ``dse compare scores.csv --truth truth.csv --extra neg_train_loss``.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..checkpoints import load_weights, read_checkpoint
from ..compare import compare_scores
from ..results import write_results
from ..scoring import score_checkpoints
from ..selection import select_checkpoints
from .data import make_dataset, save_examples
from .probe import linear_probe
from .ssl import TrainConfig, ViTConfig, augment, make_vit, train

__all__ = ["DemoConfig", "run_demo", "SCORES"]

# The registry's scores the demo computes (dse score --scores ...).
REGISTRY_SCORES = ("dse", "rankme", "dense_rankme", "alpha_req", "lidar")
# What dse compare reports on them, with how each enters Kendall τ (higher = predicted better).
SCORES = ("dse", "dse_lambda", "separability", "m_dim", "rankme", "dense_rankme", "alpha_req", "lidar",
          "epoch", "neg_train_loss")
_SCORE_LABELS = {"dse": "DSE (official)", "dse_lambda": "DSE_λ (paper)", "separability": "M_inter − M_intra",
                 "m_dim": "M_dim", "rankme": "RankMe", "dense_rankme": "dense RankMe", "alpha_req": "α-ReQ (α near 1)",
                 "lidar": "LiDAR", "epoch": "epoch number", "neg_train_loss": "− training loss"}


@dataclass
class DemoConfig:
    """Sizes of the demo. The defaults are the full run (about 15 min on 2 cores); :meth:`quick` is tiny."""

    num_train: int = 1000
    num_val: int = 200
    probe_train: int = 500            # train images whose masks train the linear probe
    epochs: int = 40
    save_every: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    dse_weight: float = 0.1           # β of the regularized run (fixed beforehand, not tuned)
    lidar_images: int = 100
    lidar_views: int = 4
    probe_epochs: int = 100
    seed: int = 0
    runs: tuple = (("dino", "dino", 0.0), ("mocov3", "mocov3", 0.0), ("dino+dse", "dino", None))
    vit: ViTConfig = field(default_factory=ViTConfig)

    @classmethod
    def quick(cls) -> "DemoConfig":
        return cls(num_train=128, num_val=32, probe_train=64, epochs=2, save_every=1, batch_size=32,
                   lidar_images=16, lidar_views=2, probe_epochs=30)


def _batched(fn, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([fn(images[i:i + batch]) for i in range(0, images.shape[0], batch)])


def _features(backbone, images_uint8: torch.Tensor) -> torch.Tensor:
    """Patch tokens (n, N, d) of normalized images, last block after the norm."""
    from ..images import normalize

    out = _batched(lambda x: backbone.forward_features(normalize(x)), images_uint8)
    return out[:, backbone.num_prefix_tokens:]


def score_run(checkpoints: list[Path], data, config: DemoConfig, table: Path, progress: bool) -> list[dict]:
    """The label-free scores of a run's checkpoints on the val images: ``dse score --scores`` (the
    registry, one forward per image) into ``table``."""
    report = score_checkpoints(checkpoints, model=make_vit(config.vit), images=data.val_images, out=table,
                               num_images=data.val_images.shape[0], dse_batch=data.val_images.shape[0],
                               batch_size=128, seed=config.seed, scores=list(REGISTRY_SCORES),
                               lidar_images=config.lidar_images, lidar_views=config.lidar_views, progress=progress)
    if report.failures:
        raise RuntimeError(f"the demo could not score {report.failures}")
    return report.rows


def probe_checkpoint(path: Path, data, config: DemoConfig) -> dict:
    """The ground truth of one checkpoint: the val mIoU of a linear probe (trained on train masks)."""
    backbone = make_vit(config.vit).eval()
    load_weights(backbone, path)
    meta = read_checkpoint(path)
    train_tokens = _features(backbone, data.train_images[:config.probe_train])
    val_tokens = _features(backbone, data.val_images)
    probe = linear_probe(train_tokens, data.train_masks[:config.probe_train], val_tokens, data.val_masks,
                         data.num_classes, epochs=config.probe_epochs, seed=config.seed)
    loss = float(meta.get("train_loss", float("nan")))
    return {"miou": float(probe["miou"]), "pixel_accuracy": float(probe["pixel_accuracy"]), "train_loss": loss,
            "neg_train_loss": -loss}


def kendall_tau(x, y) -> float:
    """Kendall τ-b of two sequences over the pairs where both are finite (NaN when < 3 such pairs)."""
    from ..compare import kendall_tau_b

    pairs = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return float("nan")
    return kendall_tau_b([a for a, _ in pairs], [b for _, b in pairs])


def _summarise_run(run, rows: list[dict], top: int = 3) -> dict:
    """One run of the comparison (``dse compare``) as the report's summary: λ, τ of every score with
    mIoU, what DSE_λ selects against the last and the best checkpoint; DSE_λ added to the rows."""
    lam_by_ckpt = {r["checkpoint"]: r["dse_lambda"] for r in run.rows}
    for row in rows:
        row["dse_lambda"] = lam_by_ckpt[row["checkpoint"]]
        row["separability"] = row["m_inter"] - row["m_intra"]
    selection = select_checkpoints(rows, top=top, window=2)  # the top 3, as dse select lists them
    chosen = run.scores["dse_lambda"]
    by_epoch = {r["epoch"]: r for r in run.rows}
    return {
        "lambda": run.lam,
        "tau": {score: run.scores[score]["tau"] if score in run.scores else float("nan") for score in SCORES},
        "tau_interval": {score: [run.scores[score]["tau_low"], run.scores[score]["tau_high"]]
                         for score in SCORES if score in run.scores},
        "selected_epochs": [selection.rows[i]["epoch"] for i in selection.selected],
        "selected_epoch": chosen["selected_epoch"], "selected_miou": chosen["selected_truth"],
        "last_epoch": run.last["epoch"], "last_miou": run.last["truth"],
        "best_epoch": run.best["epoch"], "best_miou": run.best["truth"],
        "init_miou": by_epoch[min(by_epoch)]["truth"],
        "gain_vs_last": chosen["gain_vs_last"], "gap_to_best": chosen["regret"],
        "selection_by_score": {score: {"epoch": d["selected_epoch"], "miou": d["selected_truth"],
                                       "gain_vs_last": d["gain_vs_last"]} for score, d in run.scores.items()},
        "degraded": run.best["epoch"] != run.last["epoch"] and run.best["truth"] - run.last["truth"] > 0.005,
    }


def run_demo(out_dir: str | Path = "demo-out", config: DemoConfig | None = None, *, progress: bool = True) -> dict:
    """Runs the whole demo into ``out_dir``; returns the summary (also in ``summary.json``)."""
    config = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log = _Log(progress)
    log(f"dataset: {config.num_train} train + {config.num_val} val scenes, {config.vit.img_size} px, "
        f"{config.vit.num_patches} patch tokens")
    data = make_dataset(config.num_train, config.num_val, size=config.vit.img_size, seed=config.seed)
    save_examples(data, out / "examples.png")
    all_rows: list[dict] = []
    runs: dict[str, dict] = {}
    summary: dict = {"config": _jsonable(asdict(config)), "runs": {}}
    for run_name, method, weight in config.runs:
        weight = config.dse_weight if weight is None else weight
        t0 = time.perf_counter()
        log(f"pre-training {run_name} ({method}{f', β = {weight}' if weight else ''}, {config.epochs} epochs)")
        checkpoints = train(method, data.train_images, out / "runs" / run_name,
                            TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                                        save_every=config.save_every, dse_weight=weight, seed=config.seed),
                            config.vit, progress=progress)
        train_seconds = time.perf_counter() - t0
        scored = score_run(checkpoints, data, config, out / "runs" / run_name / "scores.csv", progress)
        by_file = {Path(r["checkpoint"]).resolve(): r for r in scored}
        rows = []
        for path in log.bar(checkpoints, f"probing {run_name}"):
            row = {**by_file[path.resolve()], **probe_checkpoint(path, data, config)}
            row["checkpoint"] = path.relative_to(out).as_posix()  # the tables name files inside out_dir
            rows.append({"run": run_name, "method": method, "dse_weight": weight, **row})
        runs[run_name] = dict(method=method, dse_weight=weight, train_seconds=round(train_seconds, 1),
                              checkpoints=len(rows))
        all_rows += rows
    # τ and selections of every score: dse compare on the scores and the probe's mIoU.
    truth = [{"run": r["run"], "checkpoint": r["checkpoint"], "miou": r["miou"], "neg_train_loss": r["neg_train_loss"]}
             for r in all_rows]
    comparison = compare_scores(all_rows, truth, truth_column="miou", run_column="run", bootstrap=1000,
                                seed=config.seed, extra_scores=["neg_train_loss"])
    for run in comparison.runs:
        rows = [r for r in all_rows if r["run"] == run.name]
        summary["runs"][run.name] = {**_summarise_run(run, rows), **runs[run.name]}
    _write_comparison_inputs(out, all_rows, truth)
    summary["regularization"] = _regularization(summary["runs"], config)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["machine"] = _machine()
    _write_outputs(out, all_rows, summary)
    log(_summary_table(summary))
    log(f"report: {out / 'report.md'}  ({summary['seconds']:.0f} s)")
    return summary


def _regularization(runs: dict, config: DemoConfig) -> dict | None:
    plain = next((name for name, method, w in config.runs if method == "dino" and not w), None)
    reg = next((name for name, method, w in config.runs if method == "dino" and w != 0.0), None)
    if plain is None or reg is None:
        return None
    a, b = runs[plain], runs[reg]
    return {"plain": plain, "regularized": reg, "last_miou": [a["last_miou"], b["last_miou"]],
            "best_miou": [a["best_miou"], b["best_miou"]],
            "last_miou_change": b["last_miou"] - a["last_miou"]}


class _Log:
    def __init__(self, progress: bool):
        self.progress = progress

    def __call__(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def bar(self, items, desc: str):
        if not self.progress:
            return items
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, unit="ckpt", file=sys.stderr, leave=False)


def _write_comparison_inputs(out: Path, rows: list[dict], truth: list[dict]) -> None:
    """``scores.csv`` (a dse score table with a run column) and ``truth.csv``: ``dse compare
    scores.csv --truth truth.csv --extra neg_train_loss`` reproduces the report's τ and selections."""
    import csv

    keep = {"checkpoint", "epoch", "step", "run", "num_images", "seconds", "settings", "file", "file_size",
            "file_mtime_ns", "dse", "m_inter", "m_intra", "m_intra_image", "m_intra_batch", "m_dim", "avg_l2",
            "rankme", "dense_rankme", "alpha_req", "lidar"}
    # One table for all runs: each row's file is its checkpoint, relative to out (the runs' own
    # tables name files relative to their folders, where every run has a checkpoint0000.pth).
    write_results(out / "scores.csv", [{**{k: v for k, v in r.items() if k in keep}, "file": r["checkpoint"]}
                                       for r in rows])
    with open(out / "truth.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["run", "checkpoint", "miou", "neg_train_loss"])
        writer.writeheader()
        writer.writerows(truth)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _machine() -> str:
    return (f"{platform.machine()}, {torch.get_num_threads()} torch threads, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


CSV_COLUMNS = ("run", "method", "dse_weight", "epoch", "checkpoint", "dse", "dse_lambda", "m_inter", "m_intra",
               "m_intra_image", "m_intra_batch", "m_dim", "avg_l2", "separability", "rankme", "dense_rankme",
               "alpha_req", "lidar", "train_loss", "miou", "pixel_accuracy")


def _write_outputs(out: Path, rows: list[dict], summary: dict) -> None:
    import csv

    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
    _plot(out / "demo.png", rows, summary)
    (out / "report.md").write_text(_report(summary))


def _fmt(x, digits: int = 3) -> str:
    """A signed number, or "n/a" for a missing or non-finite one."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:+.{digits}f}"


def _summary_table(summary: dict) -> str:
    runs = summary["runs"]
    names = list(runs)
    lines = ["", "Kendall τ with val mIoU (per run, over its checkpoints)",
             f"{'score':<20}" + "".join(f"{n:>12}" for n in names)]
    for score in SCORES:
        lines.append(f"{_SCORE_LABELS[score]:<20}" + "".join(f"{_fmt(runs[n]['tau'][score], 2):>12}" for n in names))
    lines += ["", "mIoU: random init → last | best (epoch) | DSE-selected (epoch)"]
    for n in names:
        r = runs[n]
        lines.append(f"{n:<10} {r['init_miou']:.3f} → {r['last_miou']:.3f} | {r['best_miou']:.3f} "
                     f"(ep {r['best_epoch']}) | {r['selected_miou']:.3f} (ep {r['selected_epoch']}), "
                     f"gain vs last {r['gain_vs_last']:+.3f}")
    return "\n".join(lines)


def _report(summary: dict) -> str:
    runs = summary["runs"]
    names = list(runs)
    cfg = summary["config"]
    md = ["# dse_ext demo report", "",
          f"{cfg['num_train']} train / {cfg['num_val']} val synthetic scenes ({cfg['vit']['img_size']} px, "
          f"{(cfg['vit']['img_size'] // cfg['vit']['patch_size']) ** 2} patch tokens), a ViT "
          f"(dim {cfg['vit']['embed_dim']}, depth {cfg['vit']['depth']}) pre-trained {cfg['epochs']} epochs per run; "
          f"{summary['seconds']:.0f} s on {summary['machine']}.", "",
          "Ground truth: val mIoU of a linear probe on frozen patch tokens, trained on the masks of "
          f"{cfg['probe_train']} train images. Label-free scores use the {cfg['num_val']} val images "
          "(no masks), computed by `dse score --scores dse,rankme,dense_rankme,alpha_req,lidar` "
          "(dse_ext.score_checkpoints); τ and selections by `dse compare` (dse_ext.compare.compare_scores, "
          "1000 bootstrap resamples): `dse compare scores.csv --truth truth.csv --extra neg_train_loss` in "
          "this folder reproduces them. ![demo](demo.png)", "",
          "## Kendall τ of each score with mIoU", "",
          "| score | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for score in SCORES:
        md.append(f"| {_SCORE_LABELS[score]} | " + " | ".join(_fmt(runs[n]["tau"][score], 2) for n in names) + " |")
    md += ["", "## Checkpoint selection (top local maximum of DSE_λ)", "",
           "| run | λ | random init | last | best (epoch) | DSE-selected (epoch) | gain vs last |",
           "|---|---|---|---|---|---|---|"]
    for n in names:
        r = runs[n]
        md.append(f"| {n} | {_fmt(r['lambda'], 3)} | {r['init_miou']:.3f} | {r['last_miou']:.3f} | "
                  f"{r['best_miou']:.3f} ({r['best_epoch']}) | {r['selected_miou']:.3f} ({r['selected_epoch']}) | "
                  f"{r['gain_vs_last']:+.3f} |")
    md += ["", "## What this run shows", ""]
    md += [f"- {line}" for line in _findings(summary)]
    return "\n".join(md) + "\n"


def _findings(summary: dict) -> list[str]:
    """Plain statements generated from the numbers, including the unflattering ones."""
    out = []
    for name, r in summary["runs"].items():
        if r["degraded"]:
            out.append(f"{name}: mIoU peaked at epoch {r['best_epoch']} ({r['best_miou']:.3f}) and ended at "
                       f"{r['last_miou']:.3f}: dense degradation of {r['best_miou'] - r['last_miou']:.3f}.")
        else:
            out.append(f"{name}: no dense degradation: the best mIoU is at (or within 0.005 of) the last checkpoint, "
                       f"so any score that grows with training ranks well here (τ of the epoch number: "
                       f"{_fmt(r['tau']['epoch'], 2)}).")
        t_dse, t_epoch = r["tau"]["dse_lambda"], r["tau"]["epoch"]
        if math.isfinite(t_dse) and math.isfinite(t_epoch):
            verdict = "better than" if t_dse > t_epoch else "no better than"
            out.append(f"{name}: DSE_λ's τ ({t_dse:+.2f}) is {verdict} the epoch number's ({t_epoch:+.2f}); "
                       f"official DSE τ {_fmt(r['tau']['dse'], 2)}, M_dim {_fmt(r['tau']['m_dim'], 2)}, "
                       f"M_inter − M_intra {_fmt(r['tau']['separability'], 2)}.")
        out.append(f"{name}: DSE selection kept epoch {r['selected_epoch']} (mIoU {r['selected_miou']:.3f}); "
                   f"{r['gain_vs_last']:+.3f} vs the last checkpoint, {r['gap_to_best']:.3f} below the best.")
    reg = summary.get("regularization")
    if reg:
        change = reg["last_miou_change"]
        out.append(f"Regularizer: {reg['regularized']} ended at mIoU {reg['last_miou'][1]:.3f} vs "
                   f"{reg['last_miou'][0]:.3f} for {reg['plain']} ({change:+.3f}); best {reg['best_miou'][1]:.3f} "
                   f"vs {reg['best_miou'][0]:.3f}. One seed each: the run-to-run spread is not measured here.")
    return out


def _plot(path: Path, rows: list[dict], summary: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(summary["runs"])
    fig = Figure(figsize=(4.2 * len(names), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        run = [r for r in rows if r["run"] == name]
        epochs = [r["epoch"] for r in run]
        ax.plot(epochs, [r["miou"] for r in run], "o-", color="tab:green", label="val mIoU (probe)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mIoU", color="tab:green")
        twin = ax.twinx()
        twin.plot(epochs, [r["dse"] for r in run], "s--", color="tab:blue", ms=3, label="DSE (official)")
        twin.plot(epochs, [r["dse_lambda"] for r in run], "^-", color="tab:purple", ms=3, label="DSE_λ")
        chosen = summary["runs"][name]["selected_epoch"]
        sel = next(r for r in run if r["epoch"] == chosen)
        twin.plot([chosen], [sel["dse_lambda"]], "*", color="tab:red", ms=14, label="DSE-selected")
        ax.set_title(f"{name}: τ(DSE_λ, mIoU) = {_fmt(summary['runs'][name]['tau']['dse_lambda'], 2)}")
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        labels = ax.get_legend_handles_labels()[1] + twin.get_legend_handles_labels()[1]
        ax.legend(handles, labels, fontsize=7, loc="lower right")
    fig.savefig(path, dpi=110)
