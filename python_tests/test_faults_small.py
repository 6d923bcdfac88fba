"""Argument checks: alpha_req(fit_range=...) and DSEMonitor's CSV with another header."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn

from dse_ext import baselines as B
from dse_ext.monitor import COMPONENTS, DSEMonitor

HEADER = ["step", *COMPONENTS, "seconds"]
DSE_KW = dict(global_clusters=8)  # 8 images × 16 tokens


# ------------------------------------------------------------------ alpha_req(fit_range=...)
@pytest.fixture
def embeddings(gen):
    # Eigenvalues i^-1.5: a clean power law over all 11 ranks (n = 40, d = 11: m = 11).
    lam = torch.tensor([i ** -1.5 for i in range(1, 12)], dtype=torch.float64)
    return torch.randn(40, 11, generator=gen, dtype=torch.float64) * lam.sqrt()


@pytest.mark.parametrize("fit_range", ["15", "1,5", b"15", (1.0, 5), (1, 5.0), (True, 5), (1, False), ("1", "5"),
                                       (1, 2, 3), (3,), [], {1, 5}, range(1, 5), 5, torch.tensor([1, 5])])
def test_alpha_req_fit_range_must_be_a_pair_of_ints(embeddings, fit_range):
    with pytest.raises(TypeError, match=r"fit_range must be .*pair of ints.*\(1, 10\)"):
        B.alpha_req(embeddings, fit_range=fit_range)


def test_alpha_req_fit_range_string_was_read_as_digits(embeddings):
    """The old behaviour: "15" iterated to (1, 5) and fitted silently; now it names the value and type."""
    with pytest.raises(TypeError, match=r"'15' \(str\)"):
        B.alpha_req(embeddings, fit_range="15")


def test_alpha_req_fit_range_accepts_tuples_lists_and_integer_scalars(embeddings):
    expected = B.alpha_req(embeddings, fit_range=(2, 9))
    assert B.alpha_req(embeddings, fit_range=[2, 9]) == expected
    assert B.alpha_req(embeddings, fit_range=(np.int64(2), np.int32(9))) == expected
    assert B.alpha_req(embeddings, fit_range=None) == B.alpha_req(embeddings)


@pytest.mark.parametrize("fit_range", [(0, 5), (-1, 5), (5, 5), (6, 2), (1, 12)])
def test_alpha_req_fit_range_bounds(embeddings, fit_range):
    with pytest.raises(ValueError, match=r"1 <= first < last <= min\(n − 1, d\) = 11"):
        B.alpha_req(embeddings, fit_range=fit_range)


# ------------------------------------------------------------------ DSEMonitor(csv_path=...)
class Tokens(nn.Module):
    """A tiny model: each pixel of a (B, 3, 4, 4) image is a token, projected to 16 features."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 16)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(16, 3, generator=torch.Generator().manual_seed(0)))
            self.proj.bias.zero_()

    def forward(self, images):
        return self.proj(images.flatten(2).transpose(1, 2))  # (B, 16, 16)


def features_fn(model, images):
    return model(images)


@pytest.fixture
def monitor_args(gen):
    probe = torch.randn(8, 3, 4, 4, generator=gen)
    return (Tokens(), probe), dict(features_fn=features_fn, **DSE_KW)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


@pytest.mark.parametrize("existing", [
    "epoch,loss,acc\n1,0.5,0.9\n",  # another tool's CSV
    ",".join(HEADER[:-1]) + "\n0,1,1,1,1,1,1,1\n",  # an older version without "seconds"
    ",".join(reversed(HEADER)) + "\n",  # same columns, another order
    "\n",  # a blank first line
])
def test_monitor_refuses_a_csv_with_another_header_at_construction(tmp_path, monitor_args, existing):
    path = tmp_path / "log.csv"
    path.write_text(existing)
    (model, probe), kwargs = monitor_args
    with pytest.raises(ValueError) as info:
        DSEMonitor(model, probe, csv_path=path, **kwargs)
    message = str(info.value)
    assert str(path) in message and "different header" in message
    assert repr(HEADER) in message  # the expected header
    assert repr(next(csv.reader(existing.splitlines()), [])) in message  # the one found
    assert "new csv_path" in message and "remove" in message
    assert path.read_text() == existing  # untouched


def test_monitor_refuses_a_file_that_is_not_text(tmp_path, monitor_args):
    path = tmp_path / "log.csv"
    path.write_bytes(b"\xff\xfe\x00binary")
    (model, probe), kwargs = monitor_args
    with pytest.raises(ValueError, match="different header"):
        DSEMonitor(model, probe, csv_path=path, **kwargs)


def test_monitor_refuses_a_directory_as_csv_path(tmp_path, monitor_args):
    (model, probe), kwargs = monitor_args
    with pytest.raises(ValueError, match="is a directory"):
        DSEMonitor(model, probe, csv_path=tmp_path, **kwargs)


def test_monitor_refuses_a_csv_created_with_another_header_after_construction(tmp_path, monitor_args):
    path = tmp_path / "log.csv"
    (model, probe), kwargs = monitor_args
    monitor = DSEMonitor(model, probe, csv_path=path, **kwargs)
    path.write_text("epoch,loss\n")  # another process writes the file in between
    with pytest.raises(ValueError, match="different header"):
        monitor.measure(0)
    assert path.read_text() == "epoch,loss\n"


def test_monitor_appends_to_a_csv_with_the_same_header(tmp_path, monitor_args):
    path = tmp_path / "log.csv"
    (model, probe), kwargs = monitor_args
    first = DSEMonitor(model, probe, csv_path=path, **kwargs)
    first.measure(0)
    first.measure(1)
    second = DSEMonitor(model, probe, csv_path=path, **kwargs)  # same header: accepted
    second.measure(2)
    rows = read_csv(path)
    assert rows[0] == HEADER and [r[0] for r in rows[1:]] == ["0", "1", "2"]
    assert float(rows[3][HEADER.index("dse")]) == pytest.approx(second.history[0]["dse"], rel=1e-12)


def test_monitor_writes_the_header_into_an_empty_file(tmp_path, monitor_args):
    path = tmp_path / "log.csv"
    path.write_text("")
    (model, probe), kwargs = monitor_args
    DSEMonitor(model, probe, csv_path=path, **kwargs).measure(4)
    rows = read_csv(path)
    assert rows[0] == HEADER and len(rows) == 2 and rows[1][0] == "4"
