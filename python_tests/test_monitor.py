"""DSEMonitor (plain loops) and DSECallback (Lightning) on a small random-init timm ViT."""

from __future__ import annotations

import csv
import math
import sys

import pytest
import torch
from torch import nn

import dse_ext
from dse_ext.features import FeatureExtractor
from dse_ext.monitor import COMPONENTS, DSEMonitor, measure_probe

timm = pytest.importorskip("timm")

DSE_KW = dict(global_clusters=8)  # 16 tokens per image: the default 24 global clusters would need more


def vit() -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # seeded weights, the global RNG left as it was
        torch.manual_seed(0)
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return vit()


@pytest.fixture
def probe() -> torch.Tensor:
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def direct(model: nn.Module, probe: torch.Tensor) -> dict[str, float]:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = dse_ext.dse(FeatureExtractor(model)(probe), **DSE_KW).to_dict()
    model.train(was)
    return out


def test_measures_only_every_k_steps(model, probe):
    monitor = DSEMonitor(model, probe, every=3, **DSE_KW)
    results = [monitor.step(s) for s in range(8)]
    assert [s for s, r in enumerate(results) if r is not None] == [0, 3, 6]
    assert [row["step"] for row in monitor.history] == [0, 3, 6]
    assert list(monitor.history[0]) == ["step", *COMPONENTS, "seconds"]
    assert monitor.history[0]["seconds"] > 0
    # Same weights, same probe, seed 0: identical every time.
    assert monitor.history[0]["dse"] == monitor.history[2]["dse"]


def test_values_equal_a_direct_dse_of_the_extracted_features(model, probe):
    expected = direct(model, probe)
    row = DSEMonitor(model, probe, **DSE_KW).measure(5)
    assert row["step"] == 5
    for name in COMPONENTS:
        assert row[name] == pytest.approx(expected[name], rel=1e-6, abs=1e-7)
    chunked = DSEMonitor(model, probe, batch_size=3, **DSE_KW).measure(0)  # 3 + 3 + 2 images per forward
    for name in COMPONENTS:
        assert chunked[name] == pytest.approx(expected[name], rel=1e-4, abs=1e-6)


def test_modes_restored_and_global_rng_untouched(model, probe):
    model.train()
    model.blocks[0].eval()  # a frozen part stays frozen
    state = torch.random.get_rng_state()
    monitor = DSEMonitor(model, probe, **DSE_KW)
    monitor.measure(0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model.training and model.blocks[1].training and not model.blocks[0].training

    def boom(m, images):
        assert not m.training
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        DSEMonitor(model, probe, features_fn=boom).measure(0)
    assert model.training and not model.blocks[0].training
    assert torch.is_grad_enabled()
    model.train()


def test_csv_rows_written_once_with_header(model, probe, tmp_path):
    path = tmp_path / "logs" / "run" / "dse.csv"
    monitor = DSEMonitor(model, probe, every=2, csv_path=path, **DSE_KW)
    for s in range(4):
        monitor.step(s)
    DSEMonitor(model, probe, csv_path=path, **DSE_KW).measure(10)  # appends to the existing file
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["step", *COMPONENTS, "seconds"]
        rows = list(reader)
    assert [int(r["step"]) for r in rows] == [0, 2, 10]
    for row, expected in zip(rows, monitor.history):
        for name in COMPONENTS:
            assert float(row[name]) == pytest.approx(expected[name], rel=1e-12)


class FakeWriter:
    def __init__(self):
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


def test_writer_gets_every_component_and_is_not_closed(model, probe):
    writer = FakeWriter()
    with DSEMonitor(model, probe, every=2, writer=writer, prefix="probe/", **DSE_KW) as monitor:
        monitor.step(0)
        monitor.step(1)
        monitor.step(2)
    assert [(t, s) for t, _, s in writer.scalars] == [(f"probe/{n}", s) for s in (0, 2) for n in COMPONENTS]
    assert writer.scalars[0][1] == monitor.history[0]["dse"]
    assert not writer.closed


def test_tensorboard_event_files(model, probe, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with DSEMonitor(model, probe, every=1, log_dir=tmp_path / "tb", **DSE_KW) as monitor:
        monitor.step(0)
        monitor.step(1)
        assert monitor.writer is not None
    assert monitor.writer is None  # closed: the monitor created it
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {f"dse/{n}" for n in COMPONENTS}
    values = events.Scalars("dse/dse")
    assert [v.step for v in values] == [0, 1]
    assert values[0].value == pytest.approx(monitor.history[0]["dse"], rel=1e-6)


def test_missing_tensorboard_is_reported_at_construction(model, probe, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        DSEMonitor(model, probe, log_dir=tmp_path)


def test_custom_features_fn_gets_chunks_on_the_model_device(model, probe):
    sizes = []

    def tokens(m, images):
        sizes.append(images.shape[0])
        assert images.device == next(m.parameters()).device
        return m.forward_features(images)[:, m.num_prefix_tokens:]  # ends with the final norm

    row = DSEMonitor(model, probe, features_fn=tokens, batch_size=5, **DSE_KW).measure(0)
    assert sizes == [5, 3]
    expected = direct(model, probe)
    for name in COMPONENTS:
        assert row[name] == pytest.approx(expected[name], rel=1e-4, abs=1e-6)


def test_features_fn_with_a_non_tensor_probe(model, probe):
    pairs = {"images": probe}
    out = measure_probe(model, pairs, lambda m, p: FeatureExtractor(m)(p["images"]), 64, DSE_KW)
    assert out["dse"] == pytest.approx(direct(model, probe)["dse"], rel=1e-6)


def test_layer_by_name(model, probe):
    row = DSEMonitor(model, probe, layer="blocks.5", **DSE_KW).measure(0)
    with torch.no_grad():
        features = FeatureExtractor(model.eval(), "blocks.5")(probe)
    model.train()
    assert row["dse"] == pytest.approx(dse_ext.dse(features, **DSE_KW).dse.item(), rel=1e-6)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(every=0), ValueError, "every"),
    (dict(every=2.0), TypeError, "every"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(probe=torch.randn(8, 3, 32)), ValueError, "probe"),
    (dict(probe=torch.randn(1, 3, 32, 32)), ValueError, "at least 2"),
    (dict(probe=[1, 2]), TypeError, "probe"),
    (dict(features_fn=3), TypeError, "features_fn"),
    (dict(writer=FakeWriter(), log_dir="x"), ValueError, "writer or log_dir"),
    (dict(writer=object()), TypeError, "add_scalar"),
    (dict(layer="no.such.layer"), ValueError, "no submodule"),
    (dict(global_cluster=8), TypeError, "global_cluster"),
])
def test_bad_arguments(model, probe, kwargs, error, match):
    kwargs = {"probe": probe, **kwargs}
    with pytest.raises(error, match=match):
        DSEMonitor(model, kwargs.pop("probe"), **kwargs)


def test_bad_step(model, probe):
    monitor = DSEMonitor(model, probe, **DSE_KW)
    with pytest.raises(ValueError, match="step"):
        monitor.step(-1)
    with pytest.raises(TypeError, match="step"):
        monitor.step(1.0)


def test_ddp_is_unwrapped(model, probe, tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(model)
        monitor = DSEMonitor(wrapped, probe, **DSE_KW)
        assert monitor.model is model and monitor.active
        assert monitor.measure(0)["dse"] == pytest.approx(direct(model, probe)["dse"], rel=1e-6)
    finally:
        dist.destroy_process_group()


def test_other_ranks_do_nothing_unless_asked(model, probe, tmp_path, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    writer = FakeWriter()
    quiet = DSEMonitor(model, probe, every=1, csv_path=tmp_path / "r1.csv", writer=writer, **DSE_KW)
    assert not quiet.active
    assert quiet.step(0) is None and quiet.measure(1) is None
    assert quiet.history == [] and writer.scalars == [] and not (tmp_path / "r1.csv").exists()
    own = DSEMonitor(model, probe, every=1, rank_zero_only=False, **DSE_KW)
    assert own.step(0) is not None


def test_lightning_callback_feeds_model_checkpoint(probe, tmp_path):
    pytest.importorskip("lightning")
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from dse_ext.integrations.lightning import DSECallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone = vit()

        def training_step(self, batch, batch_idx):
            return self.backbone(batch).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-2)

    module = Module()
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    loader = torch.utils.data.DataLoader(images, batch_size=4)
    callback = DSECallback(probe, **DSE_KW)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="dse/dse", mode="max", save_top_k=1)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_train_batches=2, default_root_dir=tmp_path,
                         callbacks=[checkpoint, callback])
    trainer.fit(module, loader)

    assert [row["epoch"] for row in callback.history] == [0, 1]
    assert [row["step"] for row in callback.history] == [2, 4]
    assert callback.history[0]["dse"] != callback.history[1]["dse"]  # the weights moved
    for name in COMPONENTS:
        assert trainer.callback_metrics[f"dse/{name}"].item() == pytest.approx(callback.history[-1][name], rel=1e-6)
    assert math.isfinite(float(checkpoint.best_model_score))
    assert float(checkpoint.best_model_score) == pytest.approx(max(r["dse"] for r in callback.history), rel=1e-6)
    # The final weights scored directly give the last value.
    assert direct(module.backbone, probe)["dse"] == pytest.approx(callback.history[-1]["dse"], rel=1e-5)
