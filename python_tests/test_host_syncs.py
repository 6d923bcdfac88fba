"""Host synchronisations of the metric and the regularizer.

On CUDA every read of a tensor's value on the host (``bool()``, ``.item()``, ``.tolist()``,
data-dependent shapes such as ``nonzero``) stalls the training step. ``dse()`` reads the device
twice per call: once to check its input before any kernel runs, once at the end for the checks
of the clusterings (``metric._host_read``). On the CPU, where such reads cost nothing, a few
shortcuts read more; this CPU test switches them off (as on CUDA) and counts, under a
TorchDispatchMode, every operator that would synchronise on a GPU. The GPU test counts the real
synchronisations with ``torch.cuda.set_sync_debug_mode``.
"""

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dse_ext
from dse_ext import metric

# Operators that read device memory on the host (a synchronisation on CUDA).
SYNCING = {"_local_scalar_dense", "nonzero", "unique", "_unique2", "unique_dim", "masked_select", "equal",
           "is_nonzero", "item", "bincount"}


class CountSyncs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNCING:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def as_on_a_gpu(monkeypatch):
    """The metric takes the paths it takes off the CPU, and _host_read calls are counted."""
    reads = []
    host_read = metric._host_read
    monkeypatch.setattr(metric, "_host_reads_are_free", lambda device: False)
    monkeypatch.setattr(metric, "_host_read", lambda *v: reads.append(len(v)) or host_read(*v))
    return reads


@pytest.mark.parametrize("kwargs", [dict(), dict(normalize=False), dict(m_dim="pooled", group_size=None)])
def test_dse_reads_the_device_twice(gen, as_on_a_gpu, kwargs):
    x = torch.randn(6, 20, 8, generator=gen)
    x[0, :3] = 0  # dead tokens take the masked normalisation
    with CountSyncs() as mode:
        out = dse_ext.dse(x, global_clusters=5, **kwargs)
    assert mode.seen == [] and len(as_on_a_gpu) == 2
    assert out == dse_ext.dse(x, global_clusters=5, **kwargs)  # the same values as the CPU shortcuts


def test_regularizer_step_reads_the_device_twice(gen, as_on_a_gpu):
    tokens = torch.randn(4, 24, 8, generator=gen, requires_grad=True)
    reg = dse_ext.DSERegularizer(global_clusters=6, seed=0)
    with CountSyncs() as mode:
        reg(tokens).backward()
    assert mode.seen == [] and len(as_on_a_gpu) == 2
    assert torch.isfinite(tokens.grad).all()


def test_errors_are_still_raised_after_the_deferred_checks(gen, as_on_a_gpu):
    x = torch.randn(4, 10, 6, generator=gen)
    with pytest.raises(ValueError, match="NaN/Inf"):
        dse_ext.dse(torch.where(torch.arange(6) == 2, float("nan"), x), global_clusters=4)
    with pytest.raises(ValueError, match="all tokens are identical"):
        dse_ext.dse(torch.ones(4, 10, 6), global_clusters=4)
    with pytest.raises(ValueError, match="every entry is 0"):
        dse_ext.dse(torch.zeros(4, 10, 6), global_clusters=4, normalize=False)


@pytest.mark.skipif(not (torch.cuda.is_available() and dse_ext.cuda_built()), reason="needs a GPU and a CUDA build")
def test_regularizer_step_on_cuda_synchronises_at_most_twice(gen):
    tokens = torch.randn(32, 196, 64, generator=gen).cuda().requires_grad_(True)
    reg = dse_ext.DSERegularizer(seed=0)
    reg(tokens).backward()  # warm-up: first-use warnings, handles, workspaces
    torch.cuda.synchronize()
    tokens.grad = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            reg(tokens).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) <= 2, f"{len(syncs)} host synchronisations per step: {syncs}"
