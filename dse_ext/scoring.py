"""Scoring saved checkpoints (or saved features) with DSE: one results row per checkpoint.

:func:`score_checkpoints` loads every checkpoint into the same backbone, extracts the dense
features of one seeded image subset and computes the DSE components; :func:`score_features` does
the same for ``.pt`` files of features. Both write the results table of :mod:`dse_ext.results`
after every checkpoint (atomically), resume a run whose table already exists without redoing
finished rows, and report a checkpoint that cannot be read, loaded or scored, then go on.

Under ``torchrun`` (torch.distributed initialized) the checkpoints are sharded over the ranks;
each rank writes its rows to ``OUT.rankR.part.csv`` as it goes and rank 0 merges them into
``OUT`` at the end (a rerun also merges the parts an interrupted run left).
"""

from __future__ import annotations

import glob
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from . import distributed
from .metric import dse
from .results import COMPONENTS, parse_epoch_step, read_results, training_order, write_results

__all__ = ["ScoreReport", "score_checkpoints", "score_features", "expand_paths", "dse_in_chunks"]

_GLOB_CHARS = set("*?[")


@dataclass
class ScoreReport:
    """The outcome of a scoring run (on rank 0: of all ranks)."""

    rows: list[dict]                                              # the whole table, in training order
    scored: list[str] = field(default_factory=list)               # scored in this run
    skipped: list[str] = field(default_factory=list)              # already in the table: not redone
    failures: list[tuple[str, str]] = field(default_factory=list)  # (checkpoint, reason)

    @property
    def ok(self) -> bool:
        return not self.failures


def expand_paths(patterns: Iterable[str | os.PathLike]) -> list[str]:
    """Paths and glob patterns (``'runs/ckpt_*.pth'``) → paths, each pattern's matches sorted.

    A pattern with wildcards that matches nothing raises ``FileNotFoundError``; a plain path is
    kept even if missing (scoring reports it and goes on).
    """
    paths: list[str] = []
    for pattern in patterns:
        pattern = str(pattern)
        if _GLOB_CHARS & set(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no file matches {pattern!r}")
            paths.extend(matches)
        else:
            paths.append(pattern)
    return list(dict.fromkeys(paths))  # drop repeats, keep order


def dse_in_chunks(features: Callable[[int, int], torch.Tensor], num_images: int, chunk: int, **dse_kwargs) -> dict:
    """DSE components averaged over ``round(num_images / chunk)`` near-equal chunks of images.

    ``features(start, stop)`` returns the ``(stop - start, N, d)`` features of those images. The
    mean is weighted by chunk size; ``num_images`` is added to the result.
    """
    parts = max(1, round(num_images / chunk))
    bounds = torch.linspace(0, num_images, parts + 1).round().long().tolist()
    totals = dict.fromkeys(COMPONENTS, 0.0)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        out = dse(features(start, stop), **dse_kwargs).to_dict()
        for name in COMPONENTS:
            totals[name] += out[name] * (stop - start) / num_images
    return {**totals, "num_images": num_images}


def _part_path(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.name}.rank{rank}.part.csv")


def _existing_rows(out: Path) -> dict[str, dict]:
    """Rows of the table and of any part files left by an interrupted distributed run."""
    rows: dict[str, dict] = {}
    for path in [out, *sorted(out.parent.glob(f"{out.name}.rank*.part.csv"))]:
        if path.exists():
            for row in read_results(path):
                rows[row["checkpoint"]] = row
    return rows


def _consolidate(out: Path, rows: dict[str, dict]) -> None:
    """Folds part files an interrupted distributed run left into ``out`` (rank 0, all ranks wait)."""
    distributed.barrier()  # every rank has read them
    parts = sorted(out.parent.glob(f"{out.name}.rank*.part.csv"))
    if parts and distributed.rank() == 0:
        write_results(out, training_order(list(rows.values())))
        for part in parts:
            part.unlink()
    distributed.barrier()


def _note(message: str, bar) -> None:
    if bar is not None:
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)


def _run(names: Sequence[str], score_one: Callable[[str], dict], out: str | os.PathLike | None, *,
         progress: bool, desc: str) -> ScoreReport:
    """Scores ``names`` (this rank's share of those not yet in ``out``) and writes the table."""
    out_path = Path(out) if out is not None else None
    rank, world = distributed.rank(), distributed.world_size()
    done = _existing_rows(out_path) if out_path is not None else {}
    if out_path is not None:
        _consolidate(out_path, done)
    todo = [n for n in names if n not in done]
    mine = todo[rank::world]
    report = ScoreReport(rows=[], skipped=[n for n in names if n in done])
    new_rows: list[dict] = []
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc=desc, unit="ckpt", file=sys.stderr)
    if report.skipped and rank == 0:
        _note(f"{len(report.skipped)} checkpoint(s) already in {out_path}: not scored again", bar)
    target = None
    if out_path is not None:
        target = _part_path(out_path, rank) if world > 1 else out_path
    for name in mine:
        start = time.perf_counter()
        try:
            row = score_one(name)
        except Exception as e:  # unreadable, not fitting, bad features: report and go on
            reason = f"{type(e).__name__}: {e}"
            report.failures.append((name, reason))
            _note(f"skipped {name}: {reason}", bar)
        else:
            epoch, step = parse_epoch_step(name)
            row = {"checkpoint": name, "epoch": epoch, "step": step, **row,
                   "seconds": round(time.perf_counter() - start, 3)}
            new_rows.append(row)
            report.scored.append(name)
            if target is not None:  # after every checkpoint: an interruption loses nothing finished
                kept = new_rows if world > 1 else [*done.values(), *new_rows]
                write_results(target, training_order(kept))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return _merge(report, done, new_rows, out_path)


def _merge(report: ScoreReport, done: dict, new_rows: list[dict], out_path: Path | None) -> ScoreReport:
    """Brings every rank's rows and failures to all ranks; rank 0 writes the merged table."""
    gathered = distributed.all_gather_objects((new_rows, report.scored, report.failures))
    rows = dict(done)
    report.scored, report.failures = [], []
    for rank_rows, scored, failures in gathered:
        rows.update({r["checkpoint"]: r for r in rank_rows})
        report.scored += scored
        report.failures += failures
    report.rows = training_order(list(rows.values()))
    if out_path is not None and distributed.world_size() > 1:
        distributed.barrier()  # every part file is complete
        if distributed.rank() == 0:
            write_results(out_path, report.rows)
            for part in out_path.parent.glob(f"{out_path.name}.rank*.part.csv"):
                part.unlink()
        distributed.barrier()
    elif out_path is not None and not out_path.exists():
        write_results(out_path, report.rows)  # nothing new: still leave a table behind
    return report


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def score_checkpoints(checkpoints: Iterable[str | os.PathLike], *, model, images, out=None, num_images: int = 2048,
                      batch_size: int = 64, dse_batch: int = 1024, device: str | torch.device = "cpu",
                      dtype: torch.dtype | str = torch.float32, seed: int = 0, layer: int | str | None = None,
                      key: str | None = None, prefix: str | None = None, image_size: int | None = None,
                      unsafe_load: bool = False, model_kwargs: dict | None = None, progress: bool = True,
                      **dse_kwargs) -> ScoreReport:
    """Scores each checkpoint of one training run on the same seeded images.

    Args:
        checkpoints: files or glob patterns (see :func:`expand_paths`).
        model: a timm model name (created with ``pretrained=False, num_classes=0`` and
            ``model_kwargs``) or an ``nn.Module`` whose weights each checkpoint replaces.
        images: a folder of images (a seeded subset of ``num_images`` is read once, see
            :func:`dse_ext.images.load_image_subset`) or a tensor ``(n, 3, H, W)`` (uint8 0–255,
            or float already normalized).
        out: the results CSV (resumed if it exists); ``None`` keeps the rows in memory only.
        num_images: images scored per checkpoint (default 2048).
        batch_size: images per forward pass.
        dse_batch: images per DSE evaluation; the components are averaged over the
            ``num_images / dse_batch`` evaluations (default 2 × 1024).
        device, dtype: where and in which precision the model runs (``float32``, ``bfloat16``
            or ``float16`` through autocast); DSE is computed in float32.
        seed: picks the images and seeds DSE's k-means and permutations.
        layer: which block/stage or named module gives the features (:mod:`dse_ext.features`).
        key, prefix, unsafe_load: checkpoint layout (:func:`dse_ext.checkpoints.load_weights`).
        image_size: crop size of images read from a folder; default: the input size of a
            fixed-size ViT, else the model's default configuration, else 224.
        **dse_kwargs: options of :func:`dse_ext.dse` (``local_clusters``, ``global_clusters``, ...).

    Returns:
        :class:`ScoreReport`; ``report.failures`` lists what could not be scored and why.
    """
    from .checkpoints import load_weights
    from .features import FeatureExtractor
    from .images import load_image_subset, normalize

    device = torch.device(device)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    for name, value in (("batch_size", batch_size), ("dse_batch", dse_batch)):
        if not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an int >= 2, got {value!r}")
    names = expand_paths(checkpoints)
    if isinstance(model, str):
        try:
            import timm
        except ImportError:
            raise ImportError("a model given by name needs timm: pip install 'dse_ext[models]'") from None
        model = timm.create_model(model, pretrained=False, num_classes=0, **(model_kwargs or {}))
    model = model.to(device).eval()
    if isinstance(images, (str, os.PathLike)):
        pixels, _ = load_image_subset(images, num_images, seed=seed, size=image_size or _input_size(model),
                                      progress=progress and distributed.rank() == 0)
    elif isinstance(images, torch.Tensor) and images.dim() == 4:
        pixels = images[:num_images]
    else:
        raise TypeError("images must be a folder of images or an (n, 3, H, W) tensor")
    count = pixels.shape[0]
    extract = FeatureExtractor(model, layer)

    def features(start: int, stop: int) -> torch.Tensor:
        chunks = []
        for i in range(start, stop, batch_size):
            batch = pixels[i:min(stop, i + batch_size)].to(device)
            batch = normalize(batch) if batch.dtype == torch.uint8 else batch.float()
            with torch.inference_mode(), _autocast(device, dtype):
                chunks.append(extract(batch).float())
        return torch.cat(chunks)

    _check_setup(lambda: features(0, 2), count, dse_batch, dse_kwargs)

    def score_one(path: str) -> dict:
        load_weights(model, path, key=key, prefix=prefix, unsafe=unsafe_load)
        return dse_in_chunks(features, count, dse_batch, seed=seed, **dse_kwargs)

    return _run(names, score_one, out, progress=progress, desc="checkpoints")


def _input_size(model) -> int:
    """The square input size a timm model expects (fixed-size ViTs), else its default config's, else 224."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is not None and not getattr(model.patch_embed, "dynamic_img_size", False):
        return int(size[0] if isinstance(size, (tuple, list)) else size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return int(cfg.get("input_size", (3, 224, 224))[-1])


def _check_setup(two_images: Callable[[], torch.Tensor], count: int, dse_batch: int, dse_kwargs: dict) -> None:
    """Fails fast, before any checkpoint, on a setup no checkpoint can be scored with.

    Runs the model on two images and DSE on random features of the smallest evaluation's
    shape: a model that does not take these images, or DSE options that do not fit the token
    count, raise ``ValueError`` here instead of failing every checkpoint in turn.
    """
    try:
        sample = two_images()
    except Exception as e:
        raise ValueError(f"the model cannot run on these images: {type(e).__name__}: {e}") from e
    parts = max(1, round(count / dse_batch))
    smallest = count // parts
    fake = torch.randn(smallest, sample.shape[1], sample.shape[2], generator=torch.Generator().manual_seed(0))
    try:
        dse(fake, **dse_kwargs)
    except ValueError as e:
        raise ValueError(f"DSE options do not fit {smallest} images x {sample.shape[1]} tokens: {e}") from e


def _read_features(path: str) -> torch.Tensor:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "features" in obj:
        obj = obj["features"]
    if not isinstance(obj, torch.Tensor) or obj.dim() != 3:
        shape = tuple(obj.shape) if isinstance(obj, torch.Tensor) else type(obj).__name__
        raise ValueError(f"expected a (B, N, d) tensor (or a dict with 'features'), got {shape}")
    return obj


def score_features(files: Iterable[str | os.PathLike], *, out=None, dse_batch: int = 1024, seed: int = 0,
                   progress: bool = True, **dse_kwargs) -> ScoreReport:
    """Scores ``.pt`` files of saved features, one row per file (a checkpoint's features).

    Each file holds a ``(B, N, d)`` tensor or a dict with key ``"features"``. Same table,
    resumption, sharding and error handling as :func:`score_checkpoints`.
    """
    def score_one(path: str) -> dict:
        x = _read_features(path)
        return dse_in_chunks(lambda a, b: x[a:b], x.shape[0], dse_batch, seed=seed, **dse_kwargs)

    return _run(expand_paths(files), score_one, out, progress=progress, desc="feature files")
