"""Scoring saved checkpoints (or saved features): one results row per checkpoint.

:func:`score_checkpoints` loads every checkpoint into the same backbone, extracts the dense
features of one seeded image subset and computes the scores asked for (:mod:`dse_ext.scores`:
``dse`` by default, ``rankme``, ``dense_rankme``, ``alpha_req``, ``lidar``, or a user's own) from
one model forward per image (per view for LiDAR); :func:`score_features` does the same for
``.pt`` files of features. Both write the results table of :mod:`dse_ext.results`
after every checkpoint (atomically), and report a checkpoint that cannot be read, loaded or
scored, then go on.

What a table promises (see also the README's "Guarantees"):

- **One writer.** The table is locked (:mod:`dse_ext.locking`) from before any work until the
  last row is written; a second run on the same table is refused at once, naming the process
  that holds it.
- **Resumable.** A run whose table exists scores only the checkpoints not yet in it. Checkpoints
  are identified by their resolved file (``file`` column), so relative and absolute spellings of
  one file match, and a file rewritten since it was scored (other size or modification time) is
  scored again.
- **Scores added, not redone.** Asking an existing table for a score it lacks computes only that
  score's columns for the checkpoints already in it (the others are kept); a score asked for
  again must have the options it was scored with (LiDAR's images and views).
- **One set of settings.** The settings (model, layer, checkpoint layout, images — by the digest
  of the pixels read —, image size, dtype, seed, DSE options, the scores' options) are recorded
  in every row. A resume
  with other settings is refused before any work with :class:`SettingsMismatchError`, which names
  each difference; ``rescore=True`` (``--rescore``) scores every checkpoint again and replaces
  the table's rows instead. Batch sizes and the device are not settings: they do not change what
  is measured (beyond float rounding).

Under ``torchrun`` (torch.distributed initialized) the checkpoints are sharded over the ranks;
rank 0 holds the lock, each rank writes its rows to ``OUT.rankR.part.csv`` as it goes and rank 0
merges them into ``OUT`` at the end (a rerun also merges the parts an interrupted run left).
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from . import distributed
from ._validation import check_seed
from .locking import TableInUseError, TableLock
from .metric import dse
from .results import (parse_epoch_step, read_results, settings_differences, table_settings,
                      training_order, write_results)
from .scores import LIDAR_IMAGES, LIDAR_VIEWS, Score, ScoreBatch, ViewBatch, get_score, parse_scores

__all__ = ["ScoreReport", "SettingsMismatchError", "TableInUseError", "score_checkpoints", "score_features",
           "expand_paths", "dse_in_chunks", "scores_in_chunks", "dse_options"]

_GLOB_CHARS = set("*?[")
# Settings recorded for information only: they may differ on resume (a moved image folder is fine:
# the images are compared by the digest of their pixels).
_INFORMATIVE = ("images",)
# How each setting is given on the command line, for the messages.
_FLAGS = {"model": "--model", "model_kwargs": "--model-kwargs", "layer": "--layer", "checkpoint_key": "--checkpoint-key",
          "strip_prefix": "--strip-prefix", "rename_keys": "--rename-keys", "dtype": "--dtype",
          "num_images": "--num-images",
          "image_size": "--image-size", "seed": "--seed", "dse_batch": "--dse-batch", "source": "--checkpoints/--features",
          "images_digest": "--images", "dse.local_clusters": "--local-clusters",
          "dse.global_clusters": "--global-clusters", "dse.group_size": "--group-size"}


class SettingsMismatchError(ValueError):
    """A table exists and was scored with other settings than this run's."""


@dataclass
class ScoreReport:
    """The outcome of a scoring run (on rank 0: of all ranks)."""

    rows: list[dict]                                              # the whole table, in training order
    scored: list[str] = field(default_factory=list)               # scored in this run
    skipped: list[str] = field(default_factory=list)              # already in the table: not redone
    changed: list[str] = field(default_factory=list)              # in the table, but the file changed: redone
    extended: list[str] = field(default_factory=list)             # in the table: only the scores it lacked
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


def dse_options(**dse_kwargs) -> dict:
    """Every option of :func:`dse_ext.dse` that shapes the scores, defaults filled in.

    Raises ``ValueError`` for a name that is not such an option.
    """
    params = inspect.signature(dse).parameters
    allowed = {name: p.default for name, p in params.items()
               if p.kind == p.KEYWORD_ONLY and name not in ("backend", "local_labels", "global_labels", "seed")}
    unknown = sorted(set(dse_kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"unknown DSE option(s) {unknown}; the options are {sorted(allowed)}")
    return {**allowed, **dse_kwargs}


def scores_in_chunks(features: Callable[[int, int], tuple[torch.Tensor, torch.Tensor | None]], num_images: int,
                     chunk: int, scores: Sequence[Score], *, seed: int = 0, dse_options: dict | None = None) -> dict:
    """The columns of ``needs="tokens"`` scores, averaged over ``round(num_images / chunk)``
    near-equal chunks of images (weighted by chunk size).

    ``features(start, stop)`` returns ``(tokens (n, N, d), embeddings (n, e) or None)`` of those
    images; every score sees the same chunks.
    """
    parts = max(1, round(num_images / chunk))
    bounds = torch.linspace(0, num_images, parts + 1).round().long().tolist()
    totals: dict[str, float] = {}
    for start, stop in zip(bounds[:-1], bounds[1:]):
        tokens, embeddings = features(start, stop)
        batch = ScoreBatch(tokens, embeddings, seed, dict(dse_options or {}))
        for score in scores:
            for name, value in score(batch).items():
                totals[name] = totals.get(name, 0.0) + value * (stop - start) / num_images
    return totals


def dse_in_chunks(features: Callable[[int, int], torch.Tensor], num_images: int, chunk: int, **dse_kwargs) -> dict:
    """DSE components averaged over ``round(num_images / chunk)`` near-equal chunks of images.

    ``features(start, stop)`` returns the ``(stop - start, N, d)`` features of those images. The
    mean is weighted by chunk size; ``num_images`` is added to the result.
    """
    seed = dse_kwargs.pop("seed", 0)
    totals = scores_in_chunks(lambda a, b: (features(a, b), None), num_images, chunk, [get_score("dse")], seed=seed,
                              dse_options=dse_kwargs)
    return {**totals, "num_images": num_images}


def _score_settings(scores: Sequence[Score], lidar_images: int, lidar_views: int) -> dict:
    """The options of each score asked for (what a resume must match): the views' for LiDAR-like ones."""
    return {s.name: ({"images": lidar_images, "views": lidar_views} if s.needs == "views" else {}) for s in scores}


def _smallest_chunk(count: int, chunk: int) -> int:
    return count // max(1, round(count / chunk))


# ---------------------------------------------------------------------------------------------
# The table: lock, identity of checkpoints, settings, resuming, writing


@dataclass
class _FileId:
    name: str                 # as given
    file: str                 # resolved, relative to the table's folder (absolute without a table)
    size: int | None
    mtime_ns: int | None


def _file_id(name: str, base: Path | None) -> _FileId:
    path = Path(name)
    try:
        st = path.stat()
        resolved = path.resolve()
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:  # missing or unreadable: scoring reports it
        resolved, size, mtime = Path(os.path.abspath(path)), None, None
    file = os.path.relpath(resolved, base) if base is not None else str(resolved)
    return _FileId(name, file, size, mtime)


def _part_path(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.name}.rank{rank}.part.csv")


def _parts(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f"{out.name}.rank*.part.csv"))


def _check_out(out: str | os.PathLike | None) -> Path | None:
    """The output table's path, refused before any work when it cannot be a writable file."""
    if out is None:
        return None
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; give a file name for the results table, e.g. {path / 'results.csv'}")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{path}: cannot be created, {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: cannot write in {ancestor} (permission denied)")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise ValueError(f"{path}: exists but cannot be read and written (permission denied)")
    return path


def _describe(differences: list[tuple[str, object, object]]) -> str:
    parts = []
    for name, old, new in differences:
        flag = _FLAGS.get(name)
        label = f"{name} ({flag})" if flag else name
        parts.append(f"{label}: {old!r} in the table, {new!r} now")
    return "; ".join(parts)


def _normalized(settings: dict) -> dict:
    """Settings as they read back from the table (JSON types: tuples become lists, ...)."""
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


class _Table:
    """The results table of one scoring run (all ranks): lock, existing rows, settings, writes."""

    def __init__(self, out: Path | None, rescore: bool):
        # Resolved: two spellings of one table (relative, absolute, through a link) share one lock,
        # and a table reached through a symbolic link is replaced where it is, not over the link.
        self.out = out.resolve() if out is not None else None
        self.base = self.out.parent if out is not None else None
        self.rescore = rescore
        self.lock: TableLock | None = None
        self.rows: dict[str, dict] = {}   # file -> row, the table's rows that stay
        self.replaced = 0                 # rows dropped by rescore
        self.recorded_scores: dict = {}   # the scores (and their options) the table's rows were asked for

    # -- opening: lock, read, check --------------------------------------------------------
    def open(self, settings: dict, pending: Sequence[str] = ()) -> None:
        """Locks the table (rank 0) and reads its rows; checks ``settings`` except ``pending`` keys."""
        if self.out is None:
            return
        error = None
        if distributed.rank() == 0:
            self.lock = TableLock(self.out)
            try:
                self.lock.acquire()
            except TableInUseError as e:
                error = e
            except OSError as e:
                error = ValueError(f"{self.out}: cannot write next to it ({e.strerror or e})")
        errors = distributed.all_gather_objects(repr(error) if error is not None else None)
        if error is not None:
            raise error
        if errors[0] is not None:
            raise TableInUseError(f"{self.out}: rank 0 could not take the table: {errors[0]}")
        try:
            existing: list[dict] = []
            for path in [self.out, *_parts(self.out)]:
                if path.exists():
                    existing += read_results(path)
            if self.rescore:
                self.replaced = len(existing)
            else:
                self._check(existing, settings, pending)
                for row in existing:
                    self.rows[row["file"]] = row
            self._consolidate()
        except BaseException:
            self.close()
            raise

    def _check(self, rows: list[dict], settings: dict, skip: Sequence[str]) -> None:
        recorded = table_settings(rows, self.out) if rows else None
        if recorded is None:
            return
        current = _normalized(settings)
        # Scores: the table may lack some (they are added) or hold others (kept); one asked for
        # again must have the options it was scored with.
        self.recorded_scores = recorded.get("scores", {"dse": {}})  # tables from before the registry: DSE
        asked = current.pop("scores", {})
        recorded = {k: v for k, v in recorded.items() if k != "scores"}
        diff = [d for d in settings_differences(recorded, current) if d[0] not in skip and d[0] not in _INFORMATIVE]
        for name, options in asked.items():
            if name in self.recorded_scores and self.recorded_scores[name] != options:
                diff += settings_differences(self.recorded_scores[name], options, f"scores.{name}.")
        if diff:
            raise SettingsMismatchError(
                f"{self.out} was scored with other settings: {_describe(diff)}. Write to a new --out, or pass "
                f"--rescore (rescore=True) to score every checkpoint again with these settings, replacing "
                f"the table's {len(rows)} row(s)")
        missing = [str(r.get("checkpoint")) for r in rows if not r.get("file")]
        if missing:
            raise ValueError(f"{self.out}: row(s) without a file identity ({missing[0]}, ...); pass --rescore")

    def check(self, settings: dict, pending: Sequence[str] = ()) -> None:
        """Checks ``settings`` against the table's rows, but the ``pending`` ones (not known yet).
        The table's settings become these, with the scores of the table and of this run."""
        if self.out is not None and not self.rescore and self.rows:
            self._check(list(self.rows.values()), settings, pending)
        self.settings = _normalized(settings)
        self.settings["scores"] = {**self.recorded_scores, **self.settings.get("scores", {})}

    def _consolidate(self) -> None:
        """Folds part files an interrupted distributed run left into the table (rank 0; all wait)."""
        distributed.barrier()  # every rank has read them
        parts = _parts(self.out)
        if parts and distributed.rank() == 0:
            write_results(self.out, training_order(list(self.rows.values())))
            for part in parts:
                part.unlink()
        distributed.barrier()

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # -- planning and writing ---------------------------------------------------------------
    def plan(self, names: Sequence[str], scores: Sequence[Score]) -> tuple[list[tuple], list[str], list[str],
                                                                             list[str]]:
        """``(to score, already done, changed since scored, extended)``, one entry per distinct
        file; ``to score`` holds ``(file id, the scores to compute, the row they extend or None)``:
        a row in the table lacking some of ``scores`` gets only those."""
        todo, skipped, changed, extended, seen = [], [], [], [], set()
        for name in names:
            fid = _file_id(name, self.base)
            if fid.file in seen:
                continue
            seen.add(fid.file)
            row = self.rows.get(fid.file)
            if row is None:
                todo.append((fid, list(scores), None))
            elif (row.get("file_size"), row.get("file_mtime_ns")) == (fid.size, fid.mtime_ns):
                lacking = [s for s in scores if any(row.get(c) is None for c in s.columns)]
                if lacking:
                    extended.append(name)
                    todo.append((fid, lacking, row))
                else:
                    skipped.append(name)
            else:
                changed.append(name)
                todo.append((fid, list(scores), None))  # a new row: the old one's values are stale
        return todo, skipped, changed, extended

    def row(self, fid: _FileId, values: dict, seconds: float, base: dict | None = None) -> dict:
        if base is not None:  # more scores for a row of the table
            return {**base, **values, "seconds": round((base.get("seconds") or 0.0) + seconds, 3)}
        epoch, step = parse_epoch_step(fid.name)
        return {"checkpoint": fid.name, "epoch": epoch, "step": step, **values, "seconds": round(seconds, 3),
                "file": fid.file, "file_size": fid.size, "file_mtime_ns": fid.mtime_ns, "settings": self.settings}

    def _with_settings(self, rows: list[dict]) -> list[dict]:
        """Every row with the table's settings (its scores: the union of the runs')."""
        return [{**row, "settings": self.settings} for row in rows]

    def write(self, new_rows: list[dict]) -> None:
        """After every checkpoint: an interruption loses nothing finished."""
        if self.out is None:
            return
        if distributed.world_size() > 1:
            write_results(_part_path(self.out, distributed.rank()), training_order(self._with_settings(new_rows)))
        else:
            merged = dict(self.rows)
            merged.update({r["file"]: r for r in new_rows})
            write_results(self.out, training_order(self._with_settings(list(merged.values()))))

    def finish(self, new_rows_of_all_ranks: list[dict]) -> list[dict]:
        """The whole table in training order; rank 0 writes it (merging the ranks' parts)."""
        rows = dict(self.rows)
        rows.update({r["file"]: r for r in new_rows_of_all_ranks})
        ordered = training_order(self._with_settings(list(rows.values())) if hasattr(self, "settings")
                                 else list(rows.values()))
        if self.out is None:
            return ordered
        if distributed.world_size() > 1:
            distributed.barrier()  # every part file is complete
            if distributed.rank() == 0:
                write_results(self.out, ordered)
                for part in _parts(self.out):
                    part.unlink()
            distributed.barrier()
        elif not self.out.exists() or (self.rescore and self.replaced and not new_rows_of_all_ranks):
            write_results(self.out, ordered)  # nothing new: still leave a (possibly emptied) table behind
        return ordered


def _note(message: str, bar) -> None:
    if bar is not None:
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)


def _run(table: _Table, names: Sequence[str], scores: Sequence[Score], score_one: Callable[[str, list], dict], *,
         progress: bool, desc: str) -> ScoreReport:
    """Scores ``names`` (this rank's share of those not yet in the table, or lacking some of
    ``scores``) and writes the table."""
    rank, world = distributed.rank(), distributed.world_size()
    todo, skipped, changed, extended = table.plan(names, scores)
    mine = todo[rank::world]
    report = ScoreReport(rows=[], skipped=skipped, changed=changed, extended=extended)
    new_rows: list[dict] = []
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc=desc, unit="ckpt", file=sys.stderr)
    if rank == 0:
        if table.replaced:
            _note(f"--rescore: the {table.replaced} row(s) of {table.out} are replaced", bar)
        if skipped:
            _note(f"{len(skipped)} checkpoint(s) already in {table.out}: not scored again", bar)
        if extended:
            _note(f"{len(extended)} checkpoint(s) in {table.out} lack some of the scores asked for: only those are "
                  "computed", bar)
        for name in changed:
            _note(f"{name} changed since it was scored (size or modification time): scoring it again", bar)
    for fid, wanted, base in mine:
        start = time.perf_counter()
        try:
            values = score_one(fid.name, wanted)
        except Exception as e:  # unreadable, not fitting, bad features: report and go on
            reason = f"{type(e).__name__}: {e}"
            report.failures.append((fid.name, reason))
            _note(f"skipped {fid.name}: {reason}", bar)
        else:
            new_rows.append(table.row(fid, values, time.perf_counter() - start, base))
            report.scored.append(fid.name)
            table.write(new_rows)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    gathered = distributed.all_gather_objects((new_rows, report.scored, report.failures))
    report.scored, report.failures, everyone = [], [], []
    for rank_rows, scored, failures in gathered:
        everyone += rank_rows
        report.scored += scored
        report.failures += failures
    report.rows = table.finish(everyone)
    return report


# ---------------------------------------------------------------------------------------------
# Checks before any work


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device}: CUDA is not available on this machine (torch {torch.__version__}, "
                             f"CUDA build: {torch.version.cuda is not None}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif device.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"device {device}: not a device dse score supports (cpu or cuda)")
    return device


def _create_model(name: str, model_kwargs: dict | None):
    from .hf import HF_PREFIX, load_hf_model

    if name.startswith(HF_PREFIX):
        return load_hf_model(name[len(HF_PREFIX):], model_kwargs)
    try:
        import timm
    except ImportError:
        raise ImportError("a model given by name needs timm: pip install 'dse_ext[models]'") from None
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise ValueError(f"model_kwargs must be a dict (a JSON object), got {type(model_kwargs).__name__}")
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5] if name else []
        hint = f"; similar names: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ValueError(f"unknown timm model {name!r}{hint}")
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **(model_kwargs or {}))
    except TypeError as e:
        raise ValueError(f"model_kwargs {model_kwargs} do not fit {name}: {e}") from None


def _module_identity(model: torch.nn.Module) -> dict:
    shapes = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    digest = hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]
    cls = type(model)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "architecture_digest": digest}


def _digest(pixels: torch.Tensor) -> str:
    data = pixels.detach().cpu().contiguous()
    h = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    h.update(data.view(torch.uint8).reshape(-1).numpy().tobytes() if data.numel() else b"")
    return h.hexdigest()[:16]


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def _check_dse_fits(count: int, tokens: int, dse_batch: int, options: dict) -> None:
    """DSE options that do not fit the smallest evaluation's token count: refused before any checkpoint."""
    smallest = _smallest_chunk(count, dse_batch)
    fake = torch.randn(smallest, tokens, 4, generator=torch.Generator().manual_seed(0))
    try:
        dse(fake, **{**options, "max_iters": 0})
    except ValueError as e:
        raise ValueError(f"DSE options do not fit {smallest} images x {tokens} tokens per evaluation "
                         f"(--num-images {count}, --dse-batch {dse_batch}): {e}") from None


# ---------------------------------------------------------------------------------------------
# Public entry points


def score_checkpoints(checkpoints: Iterable[str | os.PathLike], *, model, images, out=None, num_images: int = 2048,
                      batch_size: int = 64, dse_batch: int = 1024, device: str | torch.device = "cpu",
                      dtype: torch.dtype | str = torch.float32, seed: int = 0, layer: int | str | None = None,
                      key: str | None = None, prefix: str | None = None, rename=None, image_size: int | None = None,
                      unsafe_load: bool = False, model_kwargs: dict | None = None, rescore: bool = False,
                      scores=None, lidar_images: int = LIDAR_IMAGES, lidar_views: int = LIDAR_VIEWS,
                      progress: bool = True, **dse_kwargs) -> ScoreReport:
    """Scores each checkpoint of one training run on the same seeded images.

    Args:
        checkpoints: files or glob patterns (see :func:`expand_paths`).
        model: a timm model name (created with ``pretrained=False, num_classes=0`` and
            ``model_kwargs``), ``"hf:PATH"`` (a transformers ``save_pretrained`` directory,
            :mod:`dse_ext.hf`; ``model_kwargs`` then override its configuration) or an
            ``nn.Module`` whose weights each checkpoint replaces.
        images: a folder of images (a seeded subset of ``num_images`` is read once, see
            :func:`dse_ext.images.load_image_subset`) or a tensor ``(n, 3, H, W)`` (uint8 0–255,
            or float already normalized).
        out: the results CSV (resumed if it exists, see the module docstring); ``None`` keeps the
            rows in memory only.
        num_images: images scored per checkpoint (default 2048, at least 2).
        batch_size: images per forward pass.
        dse_batch: images per DSE evaluation; the components are averaged over the
            ``num_images / dse_batch`` evaluations (default 2 × 1024).
        device, dtype: where and in which precision the model runs (``float32``, ``bfloat16``
            or ``float16`` through autocast); DSE is computed in float32.
        seed: picks the images and seeds DSE's k-means and permutations (an int in [0, 2**63)).
        layer: which block/stage or named module gives the features (:mod:`dse_ext.features`).
        key, prefix, rename, unsafe_load: checkpoint layout (:func:`dse_ext.checkpoints.load_weights`):
            the sub-dict, the key prefix to strip, key renaming rules (``["^0\\.=conv1."]``).
        image_size: crop size of images read from a folder; default: the input size of a
            fixed-size ViT, else the model's default configuration, else 224.
        rescore: score every checkpoint again and replace the table's rows, whatever settings
            they were scored with.
        scores: the scores to compute (:mod:`dse_ext.scores`), e.g. ``["dse", "rankme", "lidar"]``
            or ``"dse,rankme"``; default ``["dse"]``. All come from one model forward per image
            (LiDAR adds one per view); a table lacking some of them gets only those.
        lidar_images, lidar_views: the views of ``needs="views"`` scores (LiDAR): ``lidar_views``
            augmented views (:func:`dse_ext.augment.random_views`, seeded) of each of the first
            ``lidar_images`` images of the subset (fewer when the subset is smaller).
        **dse_kwargs: options of :func:`dse_ext.dse` (``local_clusters``, ``global_clusters``, ...).

    Returns:
        :class:`ScoreReport`; ``report.failures`` lists what could not be scored and why.

    Raises (before any checkpoint is scored): ``ValueError`` for bad arguments, an unknown model,
    an unusable device or output path, DSE options that do not fit the token count;
    :class:`SettingsMismatchError` when ``out`` holds rows scored with other settings;
    :class:`TableInUseError` when another process is writing ``out``.
    """
    from ._rng import derive_seed
    from .augment import random_views
    from .checkpoints import load_weights, parse_rename, rename_rules_setting
    from .features import FeatureExtractor
    from .images import load_image_subset, normalize

    # 1. Arguments alone.
    device = _check_device(device)
    dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    _check_int(num_images, "num_images", 2)
    _check_int(batch_size, "batch_size", 1)
    _check_int(dse_batch, "dse_batch", 2)
    if image_size is not None:
        _check_int(image_size, "image_size", 1)
    seed = check_seed(seed)
    options = dse_options(**dse_kwargs)
    rules = parse_rename(rename)
    chosen = parse_scores(scores)
    _check_int(lidar_images, "lidar_images", 2)
    _check_int(lidar_views, "lidar_views", 2)
    if not isinstance(model, (str, torch.nn.Module)):
        raise TypeError(f"model must be a timm model name or an nn.Module, got {type(model).__name__}")
    from_folder = isinstance(images, (str, os.PathLike))
    if from_folder:
        if not Path(images).is_dir():
            raise FileNotFoundError(f"{images}: not a directory of images")
    elif not (isinstance(images, torch.Tensor) and images.dim() == 4 and images.shape[1] == 3):
        raise TypeError("images must be a folder of images or an (n, 3, H, W) tensor")
    if isinstance(model, str) and model.startswith("hf:") and (key or prefix or rules or unsafe_load):
        raise ValueError("--checkpoint-key, --strip-prefix, --rename-keys and --unsafe-load are for torch "
                         "checkpoints: an hf: model loads save_pretrained directories by their own names")
    names = expand_paths(checkpoints)
    out_path = _check_out(out)
    settings = {"source": "checkpoints", "model": model if isinstance(model, str) else _module_identity(model),
                "model_kwargs": model_kwargs or {}, "layer": layer, "checkpoint_key": key, "strip_prefix": prefix,
                "rename_keys": rename_rules_setting(rules), "dtype": str(dtype).replace("torch.", ""),
                "num_images": num_images, "seed": seed,
                "dse_batch": dse_batch, "dse": options, "scores": _score_settings(chosen, lidar_images, lidar_views),
                "images": str(Path(images).resolve()) if from_folder else "tensor"}

    # 2. The table: locked, its settings checked as far as known now.
    table = _Table(out_path, rescore)
    table.open(settings, pending=("image_size", "images_digest"))
    try:
        # 3. The model, tried on two blank images before any image is read.
        net = _create_model(model, model_kwargs) if isinstance(model, str) else model
        net = net.to(device).eval()
        size = image_size or _input_size(net)
        settings["image_size"] = size if from_folder else tuple(images.shape[2:])
        table.check(settings, pending=("images_digest",))
        extract = FeatureExtractor(net, layer)

        def run(batch: torch.Tensor, embeddings: bool = False):
            batch = normalize(batch) if batch.dtype == torch.uint8 else batch.float()
            with torch.inference_mode(), _autocast(device, dtype):
                if embeddings:
                    tokens, pooled = extract.with_embeddings(batch.to(device))
                    return tokens.float(), pooled.float()
                return extract(batch.to(device)).float()

        probe = torch.zeros(2, 3, size, size, dtype=torch.uint8) if from_folder else images[:2]
        try:
            tokens = run(probe).shape[1]
        except Exception as e:
            raise ValueError(f"the model cannot run on {tuple(probe.shape[1:])} images: {type(e).__name__}: {e}") from e
        with_dse = any(s.name == "dse" for s in chosen)
        if with_dse:
            _check_dse_fits(num_images if from_folder else min(num_images, images.shape[0]), tokens, dse_batch,
                            options)

        # 4. The images, and the full settings check.
        if from_folder:
            pixels, _ = load_image_subset(images, num_images, seed=seed, size=size,
                                          progress=progress and distributed.rank() == 0)
        else:
            pixels = images[:num_images]
        count = pixels.shape[0]
        if with_dse:
            _check_dse_fits(count, tokens, dse_batch, options)
        settings["images_digest"] = _digest(pixels)
        table.check(settings)

        views = None
        if any(s.needs == "views" for s in chosen):  # the same augmented pixels for every checkpoint
            views = random_views(pixels[:min(lidar_images, count)], lidar_views,
                                 torch.Generator().manual_seed(derive_seed(seed, "lidar")))

        def batches(images_: torch.Tensor, embeddings: bool):
            return [run(images_[i:i + batch_size], embeddings) for i in range(0, images_.shape[0], batch_size)]

        reported: list[bool] = []  # the first checkpoint's load report is printed

        def score_one(path: str, wanted: list[Score]) -> dict:
            if hasattr(net, "dse_load_checkpoint"):  # a transformers model (dse_ext.hf)
                net.dse_load_checkpoint(path)
            else:
                loaded = load_weights(net, path, key=key, prefix=prefix, rename=rules, unsafe=unsafe_load)
                if not reported and distributed.rank() == 0:  # what the layout gave, once
                    from tqdm.auto import tqdm

                    tqdm.write(f"loaded {loaded.summary()}", file=sys.stderr)
                    reported.append(True)
            values: dict = {}
            per_chunk = [s for s in wanted if s.needs == "tokens"]
            if per_chunk:
                embeddings = any(s.embeddings for s in per_chunk)

                def features(start: int, stop: int):
                    parts = batches(pixels[start:stop], embeddings)
                    if not embeddings:
                        return torch.cat(parts), None
                    return torch.cat([t for t, _ in parts]), torch.cat([e for _, e in parts])

                values.update(scores_in_chunks(features, count, dse_batch, per_chunk, seed=seed, dse_options=options))
            per_view = [s for s in wanted if s.needs == "views"]
            if per_view:
                m, v = views.shape[:2]
                pooled = torch.cat([e for _, e in batches(views.flatten(0, 1), True)]).reshape(m, v, -1)
                for score in per_view:
                    values.update(score(ViewBatch(pooled, seed)))
            return {**values, "num_images": count}

        return _run(table, names, chosen, score_one, progress=progress, desc="checkpoints")
    finally:
        table.close()


def _input_size(model) -> int:
    """The square input size a timm model expects (fixed-size ViTs), else its default config's, else 224;
    a transformers model's configured image size."""
    if getattr(model, "dse_input_size", None):
        return int(model.dse_input_size)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is not None and not getattr(model.patch_embed, "dynamic_img_size", False):
        return int(size[0] if isinstance(size, (tuple, list)) else size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return int(cfg.get("input_size", (3, 224, 224))[-1])


def _read_features(path: str) -> torch.Tensor:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "features" in obj:
        obj = obj["features"]
    if not isinstance(obj, torch.Tensor) or obj.dim() != 3:
        shape = tuple(obj.shape) if isinstance(obj, torch.Tensor) else type(obj).__name__
        raise ValueError(f"expected a (B, N, d) tensor (or a dict with 'features'), got {shape}")
    return obj


def score_features(files: Iterable[str | os.PathLike], *, out=None, dse_batch: int = 1024, seed: int = 0,
                   rescore: bool = False, scores=None, progress: bool = True, **dse_kwargs) -> ScoreReport:
    """Scores ``.pt`` files of saved features, one row per file (a checkpoint's features).

    Each file holds a ``(B, N, d)`` tensor or a dict with key ``"features"``. Same table,
    locking, settings, resumption, sharding and error handling as :func:`score_checkpoints`.
    ``scores`` as there, but for scores of augmented views (LiDAR), which need a model; the image
    embeddings of scores that use them are the means of the patch tokens.
    """
    _check_int(dse_batch, "dse_batch", 2)
    seed = check_seed(seed)
    options = dse_options(**dse_kwargs)
    chosen = parse_scores(scores)
    needs_views = [s.name for s in chosen if s.needs == "views"]
    if needs_views:
        raise ValueError(f"score(s) {needs_views} need augmented views of the images, so a model and images: "
                         "score checkpoints (--checkpoints) instead of saved features")
    names = expand_paths(files)
    settings = {"source": "features", "seed": seed, "dse_batch": dse_batch, "dse": options,
                "scores": _score_settings(chosen, LIDAR_IMAGES, LIDAR_VIEWS)}
    table = _Table(_check_out(out), rescore)
    table.open(settings)
    try:
        table.check(settings)

        def score_one(path: str, wanted: list[Score]) -> dict:
            x = _read_features(path)
            embeddings = any(s.embeddings for s in wanted)
            values = scores_in_chunks(lambda a, b: (x[a:b], x[a:b].mean(dim=1) if embeddings else None), x.shape[0],
                                      dse_batch, wanted, seed=seed, dse_options=options)
            return {**values, "num_images": x.shape[0]}

        return _run(table, names, chosen, score_one, progress=progress, desc="feature files")
    finally:
        table.close()
