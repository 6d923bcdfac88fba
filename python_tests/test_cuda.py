"""What the device × dtype table (test_op_table.py) does not cover on CUDA: that CI built and
linked the CUDA kernels, every pinned CUDA eigensolver against the CPU, the whole metric and the
regularizer on CUDA, and the once-per-process warning of the not yet validated kernels."""

import os

import pytest
import torch

import dse_ext
from dse_ext._ops import OP_NAMES

from helpers import clustered

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
    for name in OP_NAMES:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"dse::{name}", "CUDA"), name


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


# Value checks on CUDA are device-side assertions (csrc/common/checks.h): a failure aborts the
# process's CUDA context, so each case runs in a process of its own.
_BAD_VALUE_CASES = {
    "labels": ("torch.ops.dse.cluster_css(x, torch.full((2, 10), 7, device='cuda'), 3)",
               "labels must lie in [-1, k)"),
    "index": ("torch.ops.dse.effective_rank(x.reshape(20, 3), torch.full((2, 4), 99, device='cuda'))",
              "index must lie in [0, rows of x)"),
    "counts": ("torch.ops.dse.kmeans(x, torch.tensor([10, 2], device='cuda'), 3, 5, 1e-4, 0, 0)",
               "every counts[p] must lie in [k, M]"),
    "sizes": ("torch.ops.dse.cluster_css(x, torch.zeros(2, 10, dtype=torch.long, device='cuda'), 3, False,"
              " torch.ones(2, 3, dtype=torch.long))", "sizes must equal the member counts"),
}


@needs_gpu
@pytest.mark.parametrize("case", sorted(_BAD_VALUE_CASES))
def test_bad_values_on_cuda_stop_at_a_device_assertion(case):
    import subprocess
    import sys

    call, message = _BAD_VALUE_CASES[case]
    script = ("import torch, dse_ext\n"
              "x = torch.randn(2, 10, 3, device='cuda', dtype=torch.float64)\n"
              f"out = {call}\n"
              "torch.cuda.synchronize()\n"
              "print('NO ERROR')\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "NO ERROR" not in run.stdout
    assert message in run.stderr or message in run.stdout, run.stderr[-2000:]
