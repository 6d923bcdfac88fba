"""The CUDA eigensolver's fallback (csrc/cuda/solver.cu): a Jacobi batch whose cuSOLVER calls fail
goes to the general solver, and every cusolverDnXsyevBatched chunk that fails (status or info)
is redone with torch.linalg.eigh. cuSOLVER does not fail on good input, so the test hook
``dse_ext._C._inject_cuda_eigen_failure`` makes every batched call count as failed; the results
must then still match the CPU kernels. The chunking of large batches (65535 matrices,
n · lda · batch <= INT32_MAX per call) is checked on the CPU by cpp_tests (EigenSolverChunks).
"""

import pytest
import torch

import dse_ext

needs_cuda_build = pytest.mark.skipif(not dse_ext.cuda_built(), reason="needs dse_ext's CUDA kernels")
needs_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and dse_ext.cuda_built()),
                               reason="needs a GPU and a CUDA build of dse_ext")


@needs_cuda_build
def test_failure_hook_is_off_and_round_trips():
    from dse_ext import _C

    assert _C._inject_cuda_eigen_failure(True) is False
    assert _C._inject_cuda_eigen_failure(False) is True


@needs_gpu
@pytest.mark.parametrize("solver", ["auto", "jacobi", "batched"])
def test_failed_cusolver_calls_are_redone_and_match_the_cpu(solver):
    from dse_ext import _C

    g = torch.Generator().manual_seed(3)
    op = torch.ops.dse
    previous = _C._set_cuda_eigen_solver(solver)
    _C._inject_cuda_eigen_failure(True)
    try:
        # effective rank: Gram sides 12 (Jacobi) and 50 (XsyevBatched), forward, kept basis, backward
        for shape in [(6, 12, 20), (2, 70, 50)]:
            x = torch.randn(*shape, generator=g, dtype=torch.float64)
            cpu, gpu = op.effective_rank(x, None, True), op.effective_rank(x.cuda(), None, True)
            torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-10, atol=1e-12)
            grad = torch.randn(shape[0], generator=g, dtype=torch.float64)
            torch.testing.assert_close(op.effective_rank_backward(grad.cuda(), x.cuda(), None, gpu[1], gpu[2]).cpu(),
                                       op.effective_rank_backward(grad, x, None, cpu[1], cpu[2]),
                                       rtol=1e-9, atol=1e-10)
        # css: clusters in several size buckets (sides 36, 24, 8, 2, 1), forward and backward
        sizes = torch.tensor([70, 40, 25, 9, 3, 2, 1])
        labels = torch.repeat_interleave(torch.arange(7), sizes)[torch.randperm(150, generator=g)][None]
        x = torch.randn(1, 150, 36, generator=g, dtype=torch.float64)
        cpu, gpu = op.cluster_css(x, labels, 8, True), op.cluster_css(x.cuda(), labels.cuda(), 8, True)
        torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-10, atol=1e-12)
        grad = torch.randn(1, 8, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op.cluster_css_backward(grad.cuda(), x.cuda(), labels.cuda(), 8, gpu[2], gpu[3]).cpu(),
                                   op.cluster_css_backward(grad, x, labels, 8), rtol=1e-9, atol=1e-10)
    finally:
        _C._inject_cuda_eigen_failure(False)
        _C._set_cuda_eigen_solver(previous)
