"""The batches of the CUDA css kernels (csrc/common/css_batches.h): clusters bucketed by size and
chunked within a byte budget. The device × dtype table runs every css sample with the default
budget (one chunk per bucket at its sizes); here the test hook ``_set_cuda_css_batch_budget``
lowers the budget so that every chunk holds one cluster, and the results (values, kept bases,
gradients; the kept eigenvectors only up to sign) must not change. The plan itself is checked on the CPU by cpp_tests (CssBatches).
"""

import pytest
import torch

import dse_ext

needs_cuda_build = pytest.mark.skipif(not dse_ext.cuda_built(), reason="needs dse_ext's CUDA kernels")
needs_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and dse_ext.cuda_built()),
                               reason="needs a GPU and a CUDA build of dse_ext")


@needs_cuda_build
def test_budget_hook_round_trips():
    from dse_ext import _C

    default = _C._set_cuda_css_batch_budget(1)
    assert default == 256 << 20
    assert _C._set_cuda_css_batch_budget(0) == 1  # 0 restores the default
    assert _C._set_cuda_css_batch_budget(0) == default


@needs_gpu
def test_one_cluster_per_chunk_changes_nothing():
    from dse_ext import _C

    g = torch.Generator().manual_seed(9)
    op = torch.ops.dse
    sizes = torch.tensor([70, 40, 33, 25, 9, 3, 2, 1])  # buckets of rows 64-127, 32-63 (x2), 16-31, ...
    labels = torch.stack([torch.repeat_interleave(torch.arange(8), sizes)[torch.randperm(183, generator=g)]
                          for _ in range(2)]).cuda()
    x = torch.randn(2, 183, 36, generator=g, dtype=torch.float64).cuda()
    grad = torch.randn(2, 9, generator=g, dtype=torch.float64).cuda()
    runs = []
    for budget in (0, 1):  # the default, then one cluster per chunk
        previous = _C._set_cuda_css_batch_budget(budget)
        try:
            values, counts, eig, vec = op.cluster_css(x, labels, 9, True)
            runs.append((values, eig, op.cluster_css_backward(grad, x, labels, 9, eig, vec),
                         op.cluster_css_backward(grad, x, labels, 9)))  # (eigenvectors: signs may differ)
        finally:
            _C._set_cuda_css_batch_budget(previous)
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    cpu = op.cluster_css(x.cpu(), labels.cpu(), 9)[0]
    torch.testing.assert_close(runs[1][0].cpu(), cpu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(runs[1][2].cpu(), op.cluster_css_backward(grad.cpu(), x.cpu(), labels.cpu(), 9),
                               rtol=1e-9, atol=1e-10)
