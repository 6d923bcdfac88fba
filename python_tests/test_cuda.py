"""CUDA kernels against the CPU kernels (skipped without a GPU), and a check that CI built them."""

import os

import pytest
import torch

import dse_ext
from dse_ext import functional as F

from helpers import clustered

CUDA_OPS = ("kmeans", "nearest_other_centroid_distance", "nearest_other_centroid_distance_backward",
            "effective_rank", "effective_rank_backward", "cluster_css", "cluster_css_backward")

needs_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and dse_ext.cuda_built()),
                               reason="needs a GPU and a CUDA build of dse_ext")


@pytest.mark.skipif(os.environ.get("DSE_EXPECT_CUDA") != "1", reason="set DSE_EXPECT_CUDA=1 where nvcc is present")
def test_cuda_kernels_were_built_and_linked():
    # CI builds with DSE_CUDA=ON: the module imported here (on a machine without a GPU) carries CUDA kernels.
    assert dse_ext.cuda_built() and dse_ext.build_info()["cuda"]
    assert isinstance(dse_ext.build_info()["cuda_batched_syev"], bool)
    from dse_ext import _C

    assert _C._set_cuda_eigen_solver("jacobi") == "auto" and _C._set_cuda_eigen_solver("auto") == "jacobi"
    with pytest.raises(ValueError, match="unknown eigensolver"):
        _C._set_cuda_eigen_solver("qr")
    for name in CUDA_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"dse::{name}", "CUDA"), name


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nearest_other_cuda_matches_cpu(gen, dtype):
    x = torch.randn(3, 50, 16, generator=gen, dtype=dtype)
    c = torch.randn(3, 5, 16, generator=gen, dtype=dtype)
    labels = torch.randint(-1, 5, (3, 50), generator=gen)
    valid = torch.rand(3, 5, generator=gen) > 0.2
    grad = torch.randn(3, 50, generator=gen, dtype=dtype)
    op = torch.ops.dse
    for v in (None, valid):
        cpu = op.nearest_other_centroid_distance(x, c, labels, v)
        gpu = op.nearest_other_centroid_distance(x.cuda(), c.cuda(), labels.cuda(), None if v is None else v.cuda())
        torch.testing.assert_close(gpu.cpu(), cpu)
        gx, gc = op.nearest_other_centroid_distance_backward(grad, x, c, labels, v)
        gx2, gc2 = op.nearest_other_centroid_distance_backward(grad.cuda(), x.cuda(), c.cuda(), labels.cuda(),
                                                                None if v is None else v.cuda())
        torch.testing.assert_close(gx2.cpu(), gx)
        torch.testing.assert_close(gc2.cpu(), gc)
        again = op.nearest_other_centroid_distance_backward(grad.cuda(), x.cuda(), c.cuda(), labels.cuda(),
                                                             None if v is None else v.cuda())
        assert torch.equal(again[1], gc2)  # deterministic: no atomics


@needs_gpu
def test_nearest_other_cuda_opcheck(gen):
    x = torch.randn(2, 20, 4, generator=gen, dtype=torch.float64).cuda().requires_grad_(True)
    c = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64).cuda().requires_grad_(True)
    labels = torch.randint(0, 3, (2, 20), generator=gen).cuda()
    torch.library.opcheck(torch.ops.dse.nearest_other_centroid_distance.default, (x, c, labels, None))
    assert torch.autograd.gradcheck(lambda x, c: torch.ops.dse.nearest_other_centroid_distance(x, c, labels, None),
                                    (x, c))


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 8, 32), (3, 40, 6), (2, 140, 150)])
def test_effective_rank_cuda_matches_cpu(gen, dtype, shape):
    x = torch.randn(*shape, generator=gen, dtype=dtype)
    grad = torch.randn(shape[0], generator=gen, dtype=dtype)
    op = torch.ops.dse
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-6)
    for keep in (False, True):
        cpu = op.effective_rank(x, None, keep)
        gpu = op.effective_rank(x.cuda(), None, keep)
        torch.testing.assert_close(gpu[0].cpu(), cpu[0], **tol)
        g_cpu = op.effective_rank_backward(grad, x, None, cpu[1], cpu[2])
        g_gpu = op.effective_rank_backward(grad.cuda(), x.cuda(), None, gpu[1], gpu[2])
        torch.testing.assert_close(g_gpu.cpu(), g_cpu, **tol)
    table, index = x.reshape(-1, shape[-1]), torch.randint(0, shape[0] * shape[1], (4, 7), generator=gen)
    torch.testing.assert_close(op.effective_rank(table.cuda(), index.cuda())[0].cpu(), op.effective_rank(table, index)[0],
                               **tol)
    g4 = torch.randn(4, generator=gen, dtype=dtype)
    torch.testing.assert_close(op.effective_rank_backward(g4.cuda(), table.cuda(), index.cuda()).cpu(),
                               op.effective_rank_backward(g4, table, index), **tol)


@needs_gpu
@pytest.mark.parametrize("solver", ["jacobi", "batched", "torch"])
def test_every_cuda_eigensolver_agrees_with_the_cpu(gen, solver):
    # The size-based choice (Jacobi for n <= 32) is pinned to each solver in turn; a
    # solver that cannot take a size falls back, so every pinned run must agree.
    from dse_ext import _C

    op = torch.ops.dse
    previous = _C._set_cuda_eigen_solver(solver)
    try:
        for shape in [(6, 12, 20), (3, 30, 40), (2, 70, 50)]:  # n = 12, 30, 50
            x = torch.randn(*shape, generator=gen, dtype=torch.float64)
            cpu = op.effective_rank(x, None, True)
            gpu = op.effective_rank(x.cuda(), None, True)
            torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=1e-9, atol=1e-10)
            grad = torch.randn(shape[0], generator=gen, dtype=torch.float64)
            torch.testing.assert_close(op.effective_rank_backward(grad.cuda(), x.cuda(), None, gpu[1], gpu[2]).cpu(),
                                       op.effective_rank_backward(grad, x, None, cpu[1], cpu[2]),
                                       rtol=1e-9, atol=1e-10)
    finally:
        _C._set_cuda_eigen_solver(previous)


@needs_gpu
def test_effective_rank_cuda_opcheck_and_gradcheck(gen):
    x = torch.randn(3, 5, 9, generator=gen, dtype=torch.float64).cuda().requires_grad_(True)
    torch.library.opcheck(torch.ops.dse.effective_rank.default, (x,))
    torch.library.opcheck(torch.ops.dse.effective_rank.default, (x, None, True))
    assert torch.autograd.gradcheck(lambda x: torch.ops.dse.effective_rank(x)[0], (x,))


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("P,M,d,k", [(3, 40, 16, 3), (2, 300, 8, 2), (4, 50, 64, 5), (1, 300, 160, 2)])
def test_cluster_css_cuda_matches_cpu(gen, dtype, P, M, d, k):
    x = torch.randn(P, M, d, generator=gen, dtype=dtype)
    labels = torch.randint(-1, k, (P, M), generator=gen)
    grad = torch.randn(P, k, generator=gen, dtype=dtype)
    op = torch.ops.dse
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-6)
    for keep in (False, True):
        cpu = op.cluster_css(x, labels, k, keep)
        gpu = op.cluster_css(x.cuda(), labels.cuda(), k, keep)
        torch.testing.assert_close(gpu[0].cpu(), cpu[0], **tol)
        assert torch.equal(gpu[1].cpu(), cpu[1])
        g_cpu = op.cluster_css_backward(grad, x, labels, k, cpu[2], cpu[3])
        g_gpu = op.cluster_css_backward(grad.cuda(), x.cuda(), labels.cuda(), k, gpu[2], gpu[3])
        torch.testing.assert_close(g_gpu.cpu(), g_cpu, **tol)


@needs_gpu
def test_cluster_css_cuda_opcheck_and_gradcheck(gen):
    x = torch.randn(2, 20, 4, generator=gen, dtype=torch.float64).cuda().requires_grad_(True)
    labels = torch.randint(-1, 3, (2, 20), generator=gen).cuda()
    torch.library.opcheck(torch.ops.dse.cluster_css.default, (x, labels, 3))
    torch.library.opcheck(torch.ops.dse.cluster_css.default, (x, labels, 3, True))
    assert torch.autograd.gradcheck(lambda x: torch.ops.dse.cluster_css(x, labels, 3)[0], (x,))


def same_partition(a, b):
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kmeans_cuda_matches_cpu_on_separated_clusters(gen, dtype):
    x, truth = clustered(gen, 3, 120, 16, 4, dtype=dtype)
    counts = torch.tensor([120, 90, 60])
    c_cpu, l_cpu, it_cpu = torch.ops.dse.kmeans(x, counts, 4, 20, 1e-6, 5, 0)
    c_gpu, l_gpu, it_gpu = torch.ops.dse.kmeans(x.cuda(), counts.cuda(), 4, 20, 1e-6, 5, 0)
    assert torch.equal(l_gpu.cpu(), l_cpu)  # same seeds (shared RNG), same partition, same cluster ids
    torch.testing.assert_close(c_gpu.cpu(), c_cpu, rtol=1e-5, atol=1e-6)
    assert torch.all((l_gpu.cpu()[1, 90:] == -1)) and torch.all(l_gpu.cpu()[2, 60:] == -1)
    for p, n in enumerate(counts.tolist()):
        assert same_partition(l_gpu.cpu()[p, :n], truth[p, :n])
    again = torch.ops.dse.kmeans(x.cuda(), counts.cuda(), 4, 20, 1e-6, 5, 0)
    assert all(torch.equal(a, b) for a, b in zip(again, (c_gpu, l_gpu, it_gpu)))  # deterministic


@needs_gpu
def test_kmeans_cuda_seeding_and_global_rng(gen):
    x, _ = clustered(gen, 2, 80, 8, 5)
    state = torch.cuda.get_rng_state()
    c0_cpu = torch.ops.dse.kmeans(x, torch.tensor([80, 80]), 5, 0, 1e-4, 9, 1)[0]
    c0_gpu = torch.ops.dse.kmeans(x.cuda(), torch.tensor([80, 80]), 5, 0, 1e-4, 9, 1)[0]
    torch.testing.assert_close(c0_gpu.cpu(), c0_cpu, rtol=0, atol=0)  # seeding picks the same points
    assert torch.equal(state, torch.cuda.get_rng_state())
    torch.library.opcheck(torch.ops.dse.kmeans.default, (x.cuda(), torch.tensor([80, 70]).cuda(), 5, 10, 1e-4, 0, 0))


@needs_gpu
def test_dse_on_cuda_matches_cpu(gen):
    x, _ = clustered(gen, 16, 64, 32, 3, spread=0.3, dtype=torch.float32)
    x = x.reshape(16, 64, 32)
    cpu = dse_ext.dse(x, local_clusters=3, global_clusters=6, group_size=4)
    gpu = dse_ext.dse(x.cuda(), local_clusters=3, global_clusters=6, group_size=4, backend="ext")
    for name, value in cpu._asdict().items():
        torch.testing.assert_close(getattr(gpu, name).cpu(), value, rtol=1e-4, atol=1e-5, msg=name)
    reg = dse_ext.DSERegularizer(seed=0)
    tokens = x.cuda().requires_grad_(True)
    reg(tokens).backward()
    assert torch.isfinite(tokens.grad).all()


def test_unvalidated_cuda_kernels_warn_once(monkeypatch):
    from dse_ext._ops import _library as _ops

    monkeypatch.setattr(_ops, "CUDA_VALIDATED", False)
    monkeypatch.setattr(_ops, "_warned_cuda", False)
    with pytest.warns(RuntimeWarning, match="not been validated on a GPU"):
        _ops.warn_if_unvalidated(torch.device("cuda"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _ops.warn_if_unvalidated(torch.device("cuda"))  # once per process
        _ops.warn_if_unvalidated(torch.device("cpu"))
