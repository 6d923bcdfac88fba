"""A Lightning callback that tracks DSE on a fixed probe batch.

Example::

    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from dse_ext.integrations.lightning import DSECallback

    trainer = Trainer(callbacks=[
        DSECallback(probe),                                   # probe: (B, 3, H, W) images
        ModelCheckpoint(monitor="dse/dse", mode="max", save_on_train_epoch_end=True),
    ])

Needs ``lightning`` (or the older ``pytorch_lightning``): ``pip install 'dse_ext[lightning]'``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

try:
    import lightning.pytorch as pl
except ImportError:
    try:
        import pytorch_lightning as pl
    except ImportError as err:
        raise ImportError("dse_ext.integrations.lightning needs Lightning: pip install 'dse_ext[lightning]'") from err

from ..monitor import (COMPONENTS, FeaturesFn, _check_int, check_dse_kwargs, check_probe, extractor_features_fn,
                       measure_probe)

__all__ = ["DSECallback"]


class DSECallback(pl.Callback):
    """Scores DSE on a fixed probe batch at the end of every ``every_n_epochs``-th training epoch.

    Args:
        probe: fixed images ``(B, C, H, W)``, ``B >= 2``, kept on the CPU and moved to the
            module's device ``batch_size`` images at a time. With ``features_fn``, anything it
            accepts.
        every_n_epochs: measure when ``(trainer.current_epoch + 1) % every_n_epochs == 0``.
        layer: the layer :class:`dse_ext.FeatureExtractor` reads. Which module it is read from:
            if the LightningModule has a ``backbone`` attribute that is an ``nn.Module`` and
            ``layer`` is ``None`` or an ``int``, the backbone (``None``: its last block/stage);
            otherwise the LightningModule itself, so a LightningModule wrapping a backbone under
            another name needs the dotted path from the module (``layer="encoder.blocks.11"``) or
            a ``features_fn``.
        features_fn: ``features_fn(pl_module, images_chunk) -> (b, N, d)`` replacing the default.
        batch_size: probe images per forward pass.
        prefix: the logged names are ``f"{prefix}{component}"`` (``"dse/dse"``, ``"dse/m_inter"``, …).
        **dse_kwargs: passed to :func:`dse_ext.dse` (e.g. ``global_clusters=8`` for few tokens).

    Every component is logged with ``pl_module.log(name, value, on_epoch=True, sync_dist=False,
    rank_zero_only=False)``: under DDP every rank scores the same probe with the same weights and
    gets the same number without communicating, so ``ModelCheckpoint(monitor="dse/dse",
    mode="max")`` and ``EarlyStopping`` see it on every rank. The measurement runs under
    ``torch.no_grad()`` in eval mode (each submodule's mode is restored after) and leaves torch's
    global RNG state as it was. :attr:`history` holds one dict per measurement (``epoch``,
    ``step`` = ``trainer.global_step``, the components, ``seconds``); it is saved in checkpoints.

    The measurement happens in ``on_train_epoch_end``, before the monitoring callbacks
    (``ModelCheckpoint``, ``EarlyStopping``) run theirs. ``ModelCheckpoint`` saves there when there
    is no validation loop; with one it saves after validation, before the epoch's DSE exists, and
    would rank each checkpoint by the previous epoch's value: pass ``save_on_train_epoch_end=True``
    when it monitors ``"dse/dse"``.
    """

    def __init__(self, probe: Any, *, every_n_epochs: int = 1, layer: int | str | None = None,
                 features_fn: FeaturesFn | None = None, batch_size: int = 64, prefix: str = "dse/",
                 **dse_kwargs: Any):
        super().__init__()
        self.every_n_epochs = _check_int(every_n_epochs, "every_n_epochs")
        self.batch_size = _check_int(batch_size, "batch_size")
        if features_fn is not None and not callable(features_fn):
            raise TypeError(f"features_fn must be callable, got {type(features_fn).__name__}")
        if layer is not None and not isinstance(layer, (int, str)):
            raise TypeError(f"layer must be None, an int or a dotted module name, got {type(layer).__name__}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        self.probe = check_probe(probe, features_fn is not None)
        self.layer = layer
        self.features_fn = features_fn
        self.prefix = prefix
        self.dse_kwargs = check_dse_kwargs(dse_kwargs)
        self.history: list[dict[str, float]] = []
        self._extractor: tuple[nn.Module, FeaturesFn] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)

    def _features_for(self, pl_module: nn.Module) -> FeaturesFn:
        if self.features_fn is not None:
            return self.features_fn
        backbone = getattr(pl_module, "backbone", None)
        use_backbone = isinstance(backbone, nn.Module) and not isinstance(self.layer, str)
        target = backbone if use_backbone else pl_module
        if self._extractor is None or self._extractor[0] is not target:
            self._extractor = (target, extractor_features_fn(target, self.layer))
        return self._extractor[1]

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Scores the probe now, logs the components and returns the history row."""
        out = measure_probe(pl_module, self.probe, self._features_for(pl_module), self.batch_size,
                            self.dse_kwargs)
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step,
               **{name: out[name] for name in COMPONENTS}, "seconds": out["seconds"]}
        self.history.append(row)
        for name in COMPONENTS:
            pl_module.log(f"{self.prefix}{name}", row[name], on_step=False, on_epoch=True, sync_dist=False,
                          rank_zero_only=False)
        return row

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.measure(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(row) for row in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(row) for row in state_dict.get("history", [])]
