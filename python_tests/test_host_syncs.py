"""Host synchronisations of the metric and the regularizer.

On CUDA every read of a tensor's value on the host (``bool()``, ``.item()``, ``.tolist()``,
data-dependent shapes such as ``nonzero``, a copy from pageable memory) stalls the training
step. ``dse()`` reads the device twice per call on CUDA: once after the clusterings (the input's
checks and the cluster sizes, which the css kernels plan with), once at the end for the
eigensolvers' deferred status (``metric._host_read_arrays``, ``metric._host_read``); with
``normalize=False`` once more before the clusterings. The compiled ops read nothing on the host
when given what they need (counts and sizes on the CPU; value checks as device-side assertions).

On the CPU, where reads cost nothing, a few shortcuts read more and there is no eigensolver
status to defer; this CPU test switches the shortcuts off and stands in a flag for the status
(as on CUDA), and counts, under a TorchDispatchMode, every Python-level operator that would
synchronise on a GPU. The GPU test counts the real synchronisations, the compiled ops' included,
with ``torch.cuda.set_sync_debug_mode``.
"""

import contextlib
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


@contextlib.contextmanager
def _deferred_status(flag_value):
    yield torch.tensor(flag_value, dtype=torch.int32)


@pytest.fixture
def as_on_a_gpu(monkeypatch):
    """The metric takes the paths it takes off the CPU (with a deferred eigensolver status that
    reports success), and its host reads are counted."""
    reads = []
    host_read, host_read_arrays = metric._host_read, metric._host_read_arrays
    monkeypatch.setattr(metric, "_host_reads_are_free", lambda device: False)
    monkeypatch.setattr(metric, "_host_read", lambda *v: reads.append("scalars") or host_read(*v))
    monkeypatch.setattr(metric, "_host_read_arrays", lambda *v: reads.append("arrays") or host_read_arrays(*v))
    monkeypatch.setattr(metric._ops, "deferred_eigen_status", lambda device: _deferred_status(0))
    return reads


@pytest.mark.parametrize("kwargs, expected", [
    (dict(), ["arrays", "scalars"]),
    (dict(m_dim="pooled", group_size=None), ["arrays", "scalars"]),
    (dict(normalize=False), ["scalars", "arrays", "scalars"]),  # tol relative to avg_l2: one read more
])
def test_dse_reads_the_device_twice(gen, as_on_a_gpu, kwargs, expected):
    x = torch.randn(6, 20, 8, generator=gen)
    x[0, :3] = 0  # dead tokens take the masked normalisation
    with CountSyncs() as mode:
        out = dse_ext.dse(x, global_clusters=5, **kwargs)
    assert mode.seen == [] and as_on_a_gpu == expected
    assert out == dse_ext.dse(x, global_clusters=5, **kwargs)  # the same values as the CPU shortcuts


def test_regularizer_step_reads_the_device_twice(gen, as_on_a_gpu):
    tokens = torch.randn(4, 24, 8, generator=gen, requires_grad=True)
    reg = dse_ext.DSERegularizer(global_clusters=6, seed=0)
    with CountSyncs() as mode:
        reg(tokens).backward()
    assert mode.seen == [] and as_on_a_gpu == ["arrays", "scalars"]
    assert torch.isfinite(tokens.grad).all()


def test_a_failed_deferred_eigensolve_is_recomputed(gen, monkeypatch):
    """When the deferred status says an eigensolver failed, the components are computed again
    (then with the status read after every call, which redoes failed calls with torch)."""
    x = torch.randn(6, 20, 8, generator=gen)
    expected = dse_ext.dse(x, global_clusters=5)
    calls = []
    css = dse_ext._ops.UNCHECKED.cluster_css
    monkeypatch.setattr(dse_ext._ops.UNCHECKED, "cluster_css", lambda *a, **k: calls.append(1) or css(*a, **k))
    monkeypatch.setattr(metric._ops, "deferred_eigen_status", lambda device: _deferred_status(1))
    assert dse_ext.dse(x, global_clusters=5) == expected
    assert len(calls) == 4  # local and global css, twice


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
