"""Tracking DSE on a fixed probe batch during training (plain PyTorch loops).

:class:`DSEMonitor` scores the dense features of the same probe images every ``every`` steps and
logs the components to a CSV file and/or TensorBoard. :func:`measure_probe` is the measurement
itself, shared with :mod:`dse_ext.integrations.lightning`.

Example::

    probe = next(iter(val_loader))[0][:64]                  # (64, 3, 224, 224), kept on the CPU
    with DSEMonitor(model, probe, every=500, log_dir="runs/exp1") as monitor:
        for step, (images, _) in enumerate(train_loader):
            ...                                              # forward, backward, optimizer step
            monitor.step(step)                               # measures at steps 0, 500, 1000, …
"""

from __future__ import annotations

import csv
import inspect
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from . import distributed
from .features import FeatureExtractor
from .metric import DSEOutput, dse

__all__ = ["DSEMonitor", "measure_probe", "unwrap_model", "FeaturesFn"]

FeaturesFn = Callable[[nn.Module, Any], torch.Tensor]
"""``features_fn(model, images) -> (b, N, d)``: dense features of a chunk of ``b`` probe images."""

COMPONENTS: tuple[str, ...] = DSEOutput._fields
_CSV_FIELDS: list[str] = ["step", *COMPONENTS, "seconds"]  # the columns of DSEMonitor's CSV, in order
_DSE_KWARGS = frozenset(name for name in inspect.signature(dse).parameters if name != "features")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` wrappers (any depth)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (else buffer); the CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _model_float_dtype(model: nn.Module) -> torch.dtype | None:
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def check_probe(probe: Any, has_features_fn: bool) -> Any:
    """Validates the probe; a tensor is returned detached and on the CPU.

    Without a ``features_fn`` the probe must be images ``(B, C, H, W)`` with ``B >= 2``; with one,
    anything ``features_fn`` accepts (a tensor is still chunked along its first dimension).
    """
    if isinstance(probe, torch.Tensor):
        probe = probe.detach().cpu()
    if has_features_fn:
        if isinstance(probe, torch.Tensor) and (probe.dim() == 0 or probe.shape[0] < 1):
            raise ValueError(f"probe must hold at least one item along its first dimension, "
                             f"got shape {tuple(probe.shape)}")
        return probe
    if not isinstance(probe, torch.Tensor):
        raise TypeError(f"probe must be a (B, C, H, W) tensor of images (or pass features_fn), "
                        f"got {type(probe).__name__}")
    if probe.dim() != 4:
        raise ValueError(f"probe must be images of shape (B, C, H, W), got shape {tuple(probe.shape)}")
    if probe.shape[0] < 2:
        raise ValueError(f"probe must hold at least 2 images (DSE needs B >= 2), got {probe.shape[0]}")
    if not probe.is_floating_point():
        raise TypeError(f"probe must be a floating tensor of normalized images, got {probe.dtype}")
    return probe


def check_dse_kwargs(dse_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments for :func:`dse_ext.dse`; an unknown name raises ``TypeError``."""
    unknown = sorted(set(dse_kwargs) - _DSE_KWARGS)
    if unknown:
        raise TypeError(f"unknown dse() argument(s) {unknown}; valid ones: {sorted(_DSE_KWARGS)}")
    return dict(dse_kwargs)


def _check_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def extractor_features_fn(model: nn.Module, layer: int | str | None = None) -> FeaturesFn:
    """A ``features_fn`` reading ``layer`` of ``model`` with :class:`FeatureExtractor`.

    The images are cast to the model's floating dtype (a half-precision model gets half input).
    The returned function ignores the model it is called with and always reads ``model``.
    """
    extractor = FeatureExtractor(model, layer)

    def features_fn(_: nn.Module, images: torch.Tensor) -> torch.Tensor:
        dtype = _model_float_dtype(model)
        if dtype is not None and images.is_floating_point():
            images = images.to(dtype)
        return extractor(images)

    return features_fn


def _probe_features(model: nn.Module, probe: Any, features_fn: FeaturesFn, batch_size: int,
                    device: torch.device) -> torch.Tensor:
    if not isinstance(probe, torch.Tensor):
        return features_fn(model, probe)
    chunks = [features_fn(model, chunk.to(device, non_blocking=True)) for chunk in probe.split(batch_size)]
    for chunk in chunks:
        if not isinstance(chunk, torch.Tensor) or chunk.dim() != 3:
            shape = tuple(chunk.shape) if isinstance(chunk, torch.Tensor) else type(chunk).__name__
            raise ValueError(f"features_fn must return (b, N, d) features, got {shape}")
    return torch.cat(chunks) if len(chunks) > 1 else chunks[0]


def measure_probe(model: nn.Module, probe: Any, features_fn: FeaturesFn, batch_size: int = 64,
                  dse_kwargs: Mapping[str, Any] | None = None) -> dict[str, float]:
    """DSE components of the probe's dense features, as Python floats, plus ``"seconds"``.

    Args:
        model: the network; put in eval mode for the measurement, then every submodule gets its
            own previous train/eval mode back (also when the measurement raises).
        probe: images ``(B, C, H, W)`` (moved to the model's device in chunks of ``batch_size``
            along the first dimension), or any object ``features_fn`` accepts (passed whole).
        features_fn: ``features_fn(model, chunk) -> (b, N, d)``; the chunks' features are
            concatenated to ``(B, N, d)`` for :func:`dse_ext.dse`.
        batch_size: images per forward pass.
        dse_kwargs: keyword arguments of :func:`dse_ext.dse` (its default ``seed=0`` gives the
            same clustering for the same features every time).

    Returns:
        ``{"dse": …, "m_inter": …, …, "avg_l2": …, "seconds": wall-clock seconds of the whole
        measurement}``. Runs under ``torch.no_grad()``; torch's global RNG state (CPU and the
        model's CUDA device) is the same afterwards, so training draws the same random numbers
        with or without measurements.
    """
    start = time.perf_counter()
    device = model_device(model)
    modes = [(module, module.training) for module in model.modules()]
    rng_devices = [device] if device.type == "cuda" else []  # the CPU state is always saved
    try:
        with torch.random.fork_rng(devices=rng_devices, device_type="cuda"), torch.no_grad():
            model.eval()
            features = _probe_features(model, probe, features_fn, batch_size, device)
            out = dse(features, **(dse_kwargs or {})).to_dict()
    finally:
        for module, training in modes:
            module.training = training
    out["seconds"] = time.perf_counter() - start
    return out


def _tensorboard_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError("DSEMonitor(log_dir=...) needs TensorBoard: pip install tensorboard "
                          "(or pass writer=... / csv_path=... instead)") from err
    return SummaryWriter


class DSEMonitor:
    """Scores DSE on a fixed probe batch every ``every`` steps of a training loop.

    Args:
        model: the network being trained; a ``DistributedDataParallel`` / ``DataParallel``
            wrapper is unwrapped (the probe's forward never goes through the wrapper).
        probe: fixed images ``(B, C, H, W)``, ``B >= 2``, kept on the CPU and moved to the model's
            device ``batch_size`` images at a time. With ``features_fn``, anything it accepts.
        every: measure when ``step % every == 0`` (the unit is whatever the caller counts:
            iterations, epochs, …).
        layer: which layer :class:`dse_ext.FeatureExtractor` reads (``None``: the last block or
            stage); ignored when ``features_fn`` is given.
        features_fn: ``features_fn(model, images_chunk) -> (b, N, d)`` replacing the default
            extractor; it receives the unwrapped model.
        batch_size: probe images per forward pass.
        log_dir: write TensorBoard scalars here (a ``SummaryWriter`` is created at the first
            measurement; TensorBoard must be installed).
        csv_path: append one row per measurement (``step``, the components, ``seconds``) to this
            CSV file; it and its parent folders are created as needed, the header written once.
            An existing file is appended to only if its header is exactly these columns; one with
            another header (another tool's CSV, other columns) raises ``ValueError`` here, at
            construction.
        writer: an existing ``SummaryWriter``-like object (``add_scalar(tag, value, step)``);
            not closed by :meth:`close`. Exclusive with ``log_dir``.
        prefix: TensorBoard tag prefix: the tags are ``f"{prefix}{component}"``.
        rank_zero_only: under torch.distributed, measure on rank 0 only (see below).
        **dse_kwargs: passed to :func:`dse_ext.dse` (e.g. ``global_clusters=8`` for few tokens).

    :meth:`step` and :meth:`measure` return ``{"step": step, "dse": …, "m_inter": …, …,
    "avg_l2": …, "seconds": …}`` and append it to :attr:`history`. The measurement runs under
    ``torch.no_grad()`` with the model in eval mode (each submodule's mode is restored after),
    and leaves torch's global RNG state as it was.

    Distributed training: with torch.distributed initialized and ``rank_zero_only=True`` (the
    default), the probe is scored on rank 0 only, and the other ranks return ``None`` and write
    nothing. No collective operation is involved, so the ranks cannot deadlock; under DDP the
    replicas hold identical weights, so rank 0's result is the one a single process would get.
    With ``rank_zero_only=False`` every rank scores its own probe (and writes its own outputs:
    give each rank its own ``csv_path`` / ``log_dir``). Models whose forward is itself collective
    (FSDP, tensor parallelism) need ``rank_zero_only=False`` with every rank calling :meth:`step`
    at the same steps.
    """

    def __init__(self, model: nn.Module, probe: Any, *, every: int = 100, layer: int | str | None = None,
                 features_fn: FeaturesFn | None = None, batch_size: int = 64,
                 log_dir: str | os.PathLike | None = None, csv_path: str | os.PathLike | None = None,
                 writer: Any = None, prefix: str = "dse/", rank_zero_only: bool = True, **dse_kwargs: Any):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.every = _check_int(every, "every")
        self.batch_size = _check_int(batch_size, "batch_size")
        if features_fn is not None and not callable(features_fn):
            raise TypeError(f"features_fn must be callable, got {type(features_fn).__name__}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        if writer is not None and log_dir is not None:
            raise ValueError("pass either writer or log_dir, not both")
        if writer is not None and not callable(getattr(writer, "add_scalar", None)):
            raise TypeError(f"writer must have an add_scalar(tag, value, step) method, got {type(writer).__name__}")
        self.model = unwrap_model(model)
        self.probe = check_probe(probe, features_fn is not None)
        self.features_fn = features_fn if features_fn is not None else extractor_features_fn(self.model, layer)
        self.dse_kwargs = check_dse_kwargs(dse_kwargs)
        self.prefix = prefix
        self.rank_zero_only = bool(rank_zero_only)
        self.csv_path = Path(csv_path) if csv_path is not None else None
        self._check_csv_header(_CSV_FIELDS)  # refuse another tool's CSV now, not at the first measurement
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._writer_class = _tensorboard_writer_class() if log_dir is not None else None
        self.writer = writer
        self._owns_writer = False
        self.history: list[dict[str, float]] = []

    @property
    def active(self) -> bool:
        """Whether this process measures (``False`` on ranks other than 0 with ``rank_zero_only``)."""
        return not (self.rank_zero_only and distributed.rank() != 0)

    def step(self, step: int) -> dict[str, float] | None:
        """Measures if ``step % every == 0`` (and this process is :attr:`active`), else returns ``None``."""
        _check_int(step, "step", minimum=0)
        if step % self.every != 0:
            return None
        return self.measure(step)

    def measure(self, step: int) -> dict[str, float] | None:
        """Measures now (``None`` on an inactive rank); logs the result and returns it."""
        _check_int(step, "step", minimum=0)
        if not self.active:
            return None
        out = measure_probe(self.model, self.probe, self.features_fn, self.batch_size, self.dse_kwargs)
        row = {"step": step, **{name: out[name] for name in COMPONENTS}, "seconds": out["seconds"]}
        self.history.append(row)
        self._write_csv(row)
        self._write_tensorboard(row)
        return row

    def _check_csv_header(self, fields: list[str]) -> bool:
        """Whether ``csv_path`` is new (absent or empty); ``ValueError`` if it exists with another header.

        Appending rows under a header with other columns (another tool's CSV, an older version of
        this one) would silently mislabel every value, so such a file is refused.
        """
        if self.csv_path is None:
            return False
        if self.csv_path.is_dir():
            raise ValueError(f"csv_path {self.csv_path} is a directory; pass the path of a CSV file")
        if not self.csv_path.exists() or self.csv_path.stat().st_size == 0:
            return True
        try:
            with open(self.csv_path, newline="", encoding="utf-8") as handle:
                header = next(csv.reader(handle), [])
        except (UnicodeDecodeError, csv.Error) as err:
            header = f"<not a readable CSV: {err}>"
        if header != list(fields):
            raise ValueError(
                f"csv_path {self.csv_path} already exists with a different header: it has {header!r}, "
                f"DSEMonitor writes {list(fields)!r}; appending would put the rows under the wrong columns. "
                f"Pass a new csv_path, or remove (or rename) the existing file"
            )
        return False

    def _write_csv(self, row: dict[str, float]) -> None:
        if self.csv_path is None:
            return
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        new = self._check_csv_header(list(row))  # again: the file may have appeared since construction
        with open(self.csv_path, "a", newline="") as handle:
            out = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                out.writeheader()
            out.writerow(row)

    def _write_tensorboard(self, row: dict[str, float]) -> None:
        if self.writer is None and self._writer_class is not None:
            self.writer = self._writer_class(log_dir=str(self.log_dir))
            self._owns_writer = True
        if self.writer is None:
            return
        for name in COMPONENTS:
            self.writer.add_scalar(f"{self.prefix}{name}", row[name], row["step"])
        flush = getattr(self.writer, "flush", None)
        if callable(flush):
            flush()

    def close(self) -> None:
        """Closes the TensorBoard writer this monitor created (a writer passed in is left open)."""
        if self._owns_writer and self.writer is not None:
            self.writer.close()
            self.writer = None
            self._owns_writer = False

    def __enter__(self) -> DSEMonitor:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
