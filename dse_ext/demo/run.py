"""The demo pipeline: data → SSL runs over seeds → label-free scores and dense ground truth → report.

:func:`run_demo` makes the synthetic dataset, pre-trains a small ViT in each configuration of
:class:`DemoConfig` (plain DINO, optionally MoCo v3, and DINO + the DSE regularizer
``loss − β·DSE`` at one or several β) from several seeds, then scores every saved checkpoint
without labels through the library's own pipeline — :func:`dse_ext.score_checkpoints` with the
scores registry (DSE, RankMe, dense RankMe, α-ReQ, LiDAR), what ``dse score --scores`` runs — and
measures the val mIoU of a linear probe on frozen patch tokens (labels). The τ of each score with
mIoU and what each score selects come from :func:`dse_ext.compare.compare_scores` (``dse
compare``) per seed; :mod:`dse_ext.demo.report` turns them into means ± standard deviations over
seeds and says in plain words what held. Nothing is tuned on the validation masks: the probe is
trained on train masks only and the val masks are used only to measure. ``scores.csv`` and
``truth.csv`` in the output folder reproduce the per-seed comparison with ``dse compare
scores.csv --truth truth.csv --extra neg_train_loss``.

The training regime (constant learning rate and EMA momentum after a short warm-up) was chosen by
a search on held-out *train* images for one in which plain SSL degrades on the dense task;
``docs/demo/search.md`` in the repository records every regime tried, none of which degrades on
the mean over seeds.
"""

from __future__ import annotations

import csv
import json
import math
import os
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
from . import report as _report
from .data import make_dataset, save_examples
from .probe import linear_probe
from .report import SCORES
from .ssl import METHODS, TrainConfig, ViTConfig, make_vit, train

__all__ = ["DemoConfig", "RunSpec", "run_demo", "rebuild_report", "SCORES"]

# The registry's scores the demo computes (dse score --scores ...).
REGISTRY_SCORES = ("dse", "rankme", "dense_rankme", "alpha_req", "lidar")


@dataclass(frozen=True)
class RunSpec:
    """One configuration: an SSL ``method`` (``"dino"``, ``"mocov3"``) and the weight β of the
    DSE regularizer (0: off). Its name is the method, plus ``+dse`` and β when regularized."""

    method: str
    dse_weight: float = 0.0

    @property
    def name(self) -> str:
        return self.method if not self.dse_weight else f"{self.method}+dse{self.dse_weight:g}"


# β = 1e-3 as in the paper, unscaled: the rule, fixed before any run, is that the DINO loss here is
# the same cross-entropy over a softmax of prototypes as the paper's, so its scale needs no change.
PAPER_BETA = 1e-3


@dataclass
class DemoConfig:
    """Sizes and configurations of the demo.

    The regime is the one of ``docs/demo/search.md`` where plain DINO degrades on its own (found
    on held-out train scenes, never on the val masks): scenes whose object classes come in pairs
    that differ only in colour (``make_dataset(num_classes=6, class_colour=0.7,
    colour_pairs=True)``), 400 of them pre-training, learning rate 2e-3 (constant after the
    warm-up), 60 epochs.

    The defaults are ``make demo`` (``dse demo``): plain DINO and DINO + DSE at the paper's β,
    one seed each, side by side: about 5 minutes on 2 cores, so within 15 minutes on a machine 3×
    slower.
    :meth:`full` is ``dse demo --full`` (5 seeds, MoCo v3 too and a β sweep; about 48 minutes on 2
    cores); :meth:`quick` is a smoke run whose numbers mean nothing.
    """

    mode: str = "default"
    num_train: int = 500             # train scenes rendered
    pretrain_images: int | None = 400  # the first ones pre-train (None: all num_train)
    num_val: int = 200
    probe_train: int = 500            # train images whose masks train the linear probe
    num_classes: int = 6              # object classes of the scenes (make_dataset)
    class_colour: float = 0.7         # make_dataset's class_colour and colour_pairs: three shapes, each in a
    colour_pairs: bool = True         # warm and a cool class (the degrading regime of docs/demo/search.md)
    epochs: int = 60
    save_every: int = 4
    batch_size: int = 32
    lr: float = 2e-3
    schedule: str = "constant"        # after the warm-up (TrainConfig.schedule)
    warmup_epochs: int = 2
    seeds: tuple = (0,)
    runs: tuple = (RunSpec("dino"), RunSpec("dino", PAPER_BETA))
    data_seed: int = 0                # the dataset; the seeds above vary init, batches and augmentations
    lidar_images: int = 100
    lidar_views: int = 4
    probe_epochs: int = 100
    vit: ViTConfig = field(default_factory=lambda: ViTConfig(embed_dim=64, num_heads=2))

    @classmethod
    def full(cls) -> "DemoConfig":
        return cls(mode="full", seeds=(0, 1, 2, 3, 4),
                   runs=(RunSpec("dino"), RunSpec("mocov3"), RunSpec("dino", PAPER_BETA), RunSpec("dino", 1e-2),
                         RunSpec("dino", 1e-1)))

    @classmethod
    def quick(cls) -> "DemoConfig":
        return cls(mode="quick", num_train=96, pretrain_images=None, num_val=32, probe_train=48, epochs=2,
                   save_every=1, batch_size=32,
                   warmup_epochs=1, seeds=(0, 1), runs=(RunSpec("dino"), RunSpec("mocov3"), RunSpec("dino", PAPER_BETA)),
                   lidar_images=16, lidar_views=2, probe_epochs=30)

    def validate(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        if not self.runs or len({r.name for r in self.runs}) != len(self.runs):
            raise ValueError(f"runs must be distinct and at least one, got {[r.name for r in self.runs]}")
        for r in self.runs:
            if r.method not in METHODS:
                raise ValueError(f"unknown method {r.method!r}; one of {sorted(METHODS)}")
            if not (r.dse_weight >= 0 and math.isfinite(r.dse_weight)):
                raise ValueError(f"dse_weight must be a finite number >= 0, got {r.dse_weight}")
        if self.epochs < 2 or self.save_every < 1:
            raise ValueError("epochs must be >= 2 and save_every >= 1 (a run needs 3 checkpoints for τ)")
        if self.probe_train > self.num_train:
            raise ValueError(f"probe_train ({self.probe_train}) exceeds num_train ({self.num_train})")
        if self.pretrain_images is not None and not 1 <= self.pretrain_images <= self.num_train:
            raise ValueError(f"pretrain_images must be in 1..num_train ({self.num_train}) or None, "
                             f"got {self.pretrain_images}")

    @property
    def pretrain_count(self) -> int:
        """How many train scenes pre-train (the first ones)."""
        return self.num_train if self.pretrain_images is None else self.pretrain_images

    def reduced(self) -> str | None:
        """What this configuration leaves out against :meth:`full`, in words (None if nothing)."""
        full = DemoConfig.full()
        missing = []
        if len(self.seeds) < len(full.seeds):
            n = len(self.seeds)
            missing.append(f"{n} seed{'' if n == 1 else 's'} per configuration instead of {len(full.seeds)}")
        left = [r.name for r in full.runs if r not in self.runs]
        if left:
            missing.append("no " + ", ".join(left))
        if self.epochs < full.epochs:
            missing.append(f"{self.epochs} epochs instead of {full.epochs}")
        if self.pretrain_count < full.pretrain_count:
            missing.append(f"{self.pretrain_count} pre-training images instead of {full.pretrain_count}")
        return "; ".join(missing) + "." if missing else None


def _batched(fn, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([fn(images[i:i + batch]) for i in range(0, images.shape[0], batch)])


def _features(backbone, images_uint8: torch.Tensor) -> torch.Tensor:
    """Patch tokens (n, N, d) of normalized images, last block after the norm."""
    from ..images import normalize

    out = _batched(lambda x: backbone.forward_features(normalize(x)), images_uint8)
    return out[:, backbone.num_prefix_tokens:]


def score_run(checkpoints: list[Path], data, config: DemoConfig, seed: int, table: Path, progress: bool) -> list[dict]:
    """The label-free scores of a run's checkpoints on the val images: ``dse score --scores`` (the
    registry, one forward per image) into ``table``."""
    report = score_checkpoints(checkpoints, model=make_vit(config.vit), images=data.val_images, out=table,
                               num_images=data.val_images.shape[0], dse_batch=data.val_images.shape[0],
                               batch_size=128, seed=seed, scores=list(REGISTRY_SCORES),
                               lidar_images=config.lidar_images, lidar_views=config.lidar_views, progress=progress)
    if report.failures:
        raise RuntimeError(f"the demo could not score {report.failures}")
    return report.rows


def probe_checkpoint(path: Path, data, config: DemoConfig, seed: int) -> dict:
    """The ground truth of one checkpoint: the val mIoU of a linear probe (trained on train masks)."""
    backbone = make_vit(config.vit).eval()
    load_weights(backbone, path)
    meta = read_checkpoint(path)
    train_tokens = _features(backbone, data.train_images[:config.probe_train])
    val_tokens = _features(backbone, data.val_images)
    probe = linear_probe(train_tokens, data.train_masks[:config.probe_train], val_tokens, data.val_masks,
                         data.num_classes, epochs=config.probe_epochs, seed=seed)
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


def _summarise_trajectory(run, rows: list[dict], top: int = 3) -> dict:
    """One trajectory (a configuration at one seed) of the comparison (``dse compare``): λ, τ of
    every score with mIoU and its bootstrap interval, what each score selects; DSE_λ added to the rows."""
    lam_by_ckpt = {r["checkpoint"]: r["dse_lambda"] for r in run.rows}
    for row in rows:
        row["dse_lambda"] = lam_by_ckpt[row["checkpoint"]]
    selection = select_checkpoints(rows, top=top, window=2)  # the top 3, as dse select lists them
    chosen = run.scores["dse_lambda"]
    return {
        "lambda": run.lam,
        "tau": {score: run.scores[score]["tau"] if score in run.scores else float("nan") for score in SCORES},
        "tau_interval": {score: [run.scores[score]["tau_low"], run.scores[score]["tau_high"]]
                         for score in SCORES if score in run.scores},
        "selected_epochs": [selection.rows[i]["epoch"] for i in selection.selected],
        "selected_epoch": chosen["selected_epoch"], "selected_miou": chosen["selected_truth"],
        "last_epoch": run.last["epoch"], "last_miou": run.last["truth"],
        "best_epoch": run.best["epoch"], "best_miou": run.best["truth"],
        "gain_vs_last": chosen["gain_vs_last"], "gap_to_best": chosen["regret"],
        "selection_by_score": {score: {"epoch": d["selected_epoch"], "miou": d["selected_truth"],
                                       "gain_vs_last": d["gain_vs_last"]} for score, d in run.scores.items()},
    }


def _trajectory(spec: RunSpec, seed: int) -> str:
    return f"{spec.name}/seed{seed}"


def _train_config(config: DemoConfig, spec: RunSpec, seed: int) -> TrainConfig:
    return TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                       warmup_epochs=config.warmup_epochs, schedule=config.schedule, save_every=config.save_every,
                       dse_weight=spec.dse_weight, seed=seed)


def run_trajectory(spec: RunSpec, seed: int, data, config: DemoConfig, out: Path, progress: bool = False
                   ) -> tuple[list[dict], dict[str, float]]:
    """Trains ``spec`` from ``seed`` into ``out/runs/<name>/seed<seed>/``, scores and probes every
    checkpoint; returns its rows (one per checkpoint) and the seconds of each stage.

    Runs on one torch thread (restored after), so that a trajectory's numbers do not depend on how
    many run side by side: the same seed gives the same rows on a machine whatever ``workers``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = out / "runs" / spec.name / f"seed{seed}"
        seconds = {}
        t0 = time.perf_counter()
        checkpoints = train(spec.method, data.train_images[:config.pretrain_count], folder, _train_config(config, spec, seed), config.vit,
                            progress=progress)
        seconds["train"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scored = score_run(checkpoints, data, config, seed, folder / "scores.csv", progress)
        seconds["score"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        by_file = {Path(r["checkpoint"]).resolve(): r for r in scored}
        rows = []
        for path in checkpoints:
            row = {**by_file[path.resolve()], **probe_checkpoint(path, data, config, seed)}
            row["checkpoint"] = path.relative_to(out).as_posix()  # the tables name files inside out_dir
            row["separability"] = row["m_inter"] - row["m_intra"]
            rows.append({"run": spec.name, "method": spec.method, "seed": seed, "regularizer": spec.dse_weight,
                         "trajectory": _trajectory(spec, seed), **row})
        seconds["probe"] = time.perf_counter() - t0
        return rows, seconds
    finally:
        torch.set_num_threads(threads)


_WORKER_DATA = None


def _worker_init(data) -> None:
    global _WORKER_DATA
    _WORKER_DATA = data


def _worker_run(spec: RunSpec, seed: int, config: DemoConfig, out: Path):
    return run_trajectory(spec, seed, _WORKER_DATA, config, out)


def default_workers(jobs: int) -> int:
    """Trajectories run side by side: one per CPU core (each on one thread), at most ``jobs``."""
    return max(1, min(jobs, os.cpu_count() or 1))


def run_demo(out_dir: str | Path = "demo-out", config: DemoConfig | None = None, *, progress: bool = True,
             workers: int | None = None) -> dict:
    """Runs the whole demo into ``out_dir``; returns the summary (also in ``summary.json``).

    Every configuration of ``config.runs`` is trained from every seed of ``config.seeds`` into
    ``out_dir/runs/<name>/seed<seed>/``, ``workers`` trajectories side by side in worker processes
    (default :func:`default_workers`: one per core), each on one torch thread; 1 runs them here,
    one after the other, with progress bars. The elapsed time and its split by stage (data,
    train, score, probe, report; the middle three summed over the trajectories) are printed and
    stored in the summary.
    """
    config = config or DemoConfig()
    config.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stages = {"data": 0.0, "train": 0.0, "score": 0.0, "probe": 0.0, "report": 0.0}
    log = _Log(progress)
    jobs = [(spec, seed) for spec in config.runs for seed in config.seeds]
    workers = default_workers(len(jobs)) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    log(f"demo ({config.mode}): {len(config.runs)} configuration(s) × {len(config.seeds)} seed(s) = {len(jobs)} runs "
        f"of {config.epochs} epochs, {workers} side by side; {config.num_train} train ({config.pretrain_count} "
        f"pre-train) + {config.num_val} val scenes, "
        f"{config.vit.img_size} px, {config.vit.num_patches} patch tokens")
    t0 = time.perf_counter()
    data = make_dataset(config.num_train, config.num_val, size=config.vit.img_size, num_classes=config.num_classes,
                        class_colour=config.class_colour, colour_pairs=config.colour_pairs, seed=config.data_seed)
    save_examples(data, out / "examples.png")
    stages["data"] += time.perf_counter() - t0
    results: dict[tuple, tuple] = {}

    def finished(job, result) -> None:
        results[job] = result
        spec, seed = job
        took = ", ".join(f"{k} {v:.0f} s" for k, v in result[1].items())
        log(f"[{len(results)}/{len(jobs)}] {spec.name} seed {seed} done ({took}); "
            f"{time.perf_counter() - started:.0f} s elapsed")

    if workers == 1:
        for job in jobs:
            log(f"pre-training {job[0].name} seed {job[1]} ({config.epochs} epochs)")
            finished(job, run_trajectory(*job, data, config, out, progress))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init, initargs=(data,)) as pool:
            futures = {pool.submit(_worker_run, *job, config, out): job for job in jobs}
            for future in as_completed(futures):
                finished(futures[future], future.result())
    all_rows = [row for job in jobs for row in results[job][0]]  # in configuration, then seed order
    for _, seconds in results.values():
        for stage, value in seconds.items():
            stages[stage] += value
    t0 = time.perf_counter()
    summary = summarise(all_rows, config)
    summary["workers"] = workers
    summary["train_seconds"] = {_trajectory(*job): round(results[job][1]["train"], 1) for job in jobs}
    _write_comparison_inputs(out, all_rows)
    stages["report"] += time.perf_counter() - t0
    summary["stages"] = {k: round(v, 1) for k, v in stages.items()}
    summary["seconds"] = round(time.perf_counter() - started, 1)
    _write_outputs(out, all_rows, summary)
    log(_report.console_table(summary))
    log(f"report: {out / 'report.md'}  ({summary['seconds']:.0f} s with {workers} worker(s); summed over runs: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in summary["stages"].items()) + ")")
    return summary


def summarise(rows: list[dict], config: DemoConfig) -> dict:
    """The summary of finished rows (one per checkpoint, with ``run``, ``seed``, ``trajectory``,
    ``epoch``, ``miou``, ``neg_train_loss`` and the scores): ``dse compare`` per trajectory, then
    the statistics over seeds per configuration and the regularizer's paired effect."""
    truth = [{"run": r["trajectory"], "checkpoint": r["checkpoint"], "miou": r["miou"],
              "neg_train_loss": r["neg_train_loss"]} for r in rows]
    scored = [{**r, "run": r["trajectory"]} for r in rows]
    comparison = compare_scores(scored, truth, truth_column="miou", run_column="run", bootstrap=1000,
                                seed=config.data_seed, extra_scores=["neg_train_loss"])
    trajectories = {}
    for run in comparison.runs:
        mine = [r for r in rows if r["trajectory"] == run.name]
        trajectories[run.name] = _summarise_trajectory(run, mine)
    configs, rows_by = {}, {}
    for spec in config.runs:
        rows_by[spec.name] = {s: sorted((r for r in rows if r["run"] == spec.name and r["seed"] == s),
                                        key=lambda r: r["epoch"]) for s in config.seeds}
        configs[spec.name] = _report.summarise_config(
            spec.name, spec.method, spec.dse_weight, config.epochs,
            {s: trajectories[_trajectory(spec, s)] for s in config.seeds}, rows_by[spec.name])
    summary = {"mode": config.mode, "config": _jsonable(asdict(config)), "reduced": config.reduced(),
               "machine": _machine(), "trajectories": trajectories, "configs": configs,
               "regularization": _report.summarise_regularization(configs, rows_by),
               "definitions": _report.definitions()}
    summary["verdicts"] = _report.verdicts(summary)
    summary["findings"] = _report.findings(summary)
    return summary


class _Log:
    def __init__(self, progress: bool):
        self.progress = progress

    def __call__(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)


_SCORE_TABLE_COLUMNS = {"checkpoint", "epoch", "step", "run", "num_images", "seconds", "settings", "file", "file_size",
                        "file_mtime_ns", "dse", "m_inter", "m_intra", "m_intra_image", "m_intra_batch", "m_dim",
                        "avg_l2", "rankme", "dense_rankme", "alpha_req", "lidar"}


def _write_comparison_inputs(out: Path, rows: list[dict]) -> None:
    """``scores.csv`` (a dse score table with a run column naming the trajectory, ``dino/seed0``)
    and ``truth.csv``: ``dse compare scores.csv --truth truth.csv --extra neg_train_loss``
    reproduces the report's per-seed τ and selections."""
    # One table for all runs: each row's file is its checkpoint, relative to out (the runs' own
    # tables name files relative to their folders, where every run has a checkpoint0000.pth).
    write_results(out / "scores.csv", [{**{k: v for k, v in r.items() if k in _SCORE_TABLE_COLUMNS},
                                        "run": r["trajectory"], "file": r["checkpoint"]} for r in rows])
    with open(out / "truth.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["run", "checkpoint", "miou", "neg_train_loss"])
        writer.writeheader()
        writer.writerows({"run": r["trajectory"], "checkpoint": r["checkpoint"], "miou": r["miou"],
                          "neg_train_loss": r["neg_train_loss"]} for r in rows)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


CSV_COLUMNS = ("run", "method", "seed", "regularizer", "epoch", "miou", "checkpoint", "dse", "dse_lambda", "m_inter",
               "m_intra", "m_intra_image", "m_intra_batch", "m_dim", "avg_l2", "separability", "rankme",
               "dense_rankme", "alpha_req", "lidar", "train_loss", "neg_train_loss", "pixel_accuracy")
PER_SEED_COLUMNS = ("run", "method", "seed", "regularizer", "score", "tau", "tau_low", "tau_high", "selected_epoch",
                    "selected_miou", "gain_vs_last")


def _per_seed_rows(summary: dict) -> list[dict]:
    out = []
    for name, c in summary["configs"].items():
        for seed in c["seeds"]:
            t = summary["trajectories"][f"{name}/seed{seed}"]
            for score in SCORES:
                sel = t["selection_by_score"].get(score, {})
                low, high = t["tau_interval"].get(score, [None, None])
                out.append({"run": name, "method": c["method"], "seed": seed, "regularizer": c["dse_weight"],
                            "score": score, "tau": t["tau"].get(score), "tau_low": low, "tau_high": high,
                            "selected_epoch": sel.get("epoch"), "selected_miou": sel.get("miou"),
                            "gain_vs_last": sel.get("gain_vs_last")})
    return out


def _write_csv(path: Path, columns, rows) -> None:
    def cell(v):
        return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: cell(v) for k, v in r.items()} for r in rows)


def _write_outputs(out: Path, rows: list[dict], summary: dict) -> None:
    _write_csv(out / "results.csv", CSV_COLUMNS, rows)
    _write_csv(out / "per_seed.csv", PER_SEED_COLUMNS, _per_seed_rows(summary))
    (out / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
    _report.plot_demo(out / "demo.png", rows, summary)
    (out / "report.md").write_text(_report.report_markdown(summary))


def rebuild_report(out_dir: str | Path) -> None:
    """Writes ``summary.json``, ``report.md`` and ``demo.png`` of a finished run again from its
    ``summary.json`` and ``results.csv``, after a change to the report's verdicts, wording or figure:
    the verdicts and findings are derived again (:func:`dse_ext.demo.report.refresh`); no run, score
    or τ is recomputed."""
    out = Path(out_dir)
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    text = {"run", "method", "checkpoint"}
    for row in rows:
        for key, value in row.items():
            if key not in text:
                row[key] = None if value == "" else int(value) if key in ("seed", "epoch") else float(value)
    _report.refresh(summary, rows)
    (out / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
    _report.plot_demo(out / "demo.png", rows, summary)
    (out / "report.md").write_text(_report.report_markdown(summary))
