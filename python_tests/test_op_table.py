"""The device × dtype test table: every op, every sample of python_tests/samples.py, every device.

The same samples drive, on every device: parity with the pure-PyTorch reference (values and
gradients), ``torch.library.opcheck`` of the raw forward and backward ops, ``gradcheck``,
determinism, the global RNG left untouched, and CUDA against CPU. On a machine without a GPU the
CUDA rows are collected and skipped (visible in the test ids), so a GPU run executes all of them.
"""

import pytest
import torch

from dse_ext import functional as F
from dse_ext import reference as R
from dse_ext._ops import OPS

from samples import (DEVICES, DIFFERENTIABLE, DTYPES, device_available, member_sizes, raw_calls, sample_inputs,
                     sample_names)

CASES = [pytest.param(op.name, device, dtype, name, id=f"{op.name}-{device}-{str(dtype)[6:]}-{name}",
                      marks=[] if device_available(device) else
                      pytest.mark.skip(reason=f"needs a {device} device and dse_ext's {device} kernels"))
         for op in OPS for device in DEVICES for dtype in DTYPES for name in sample_names(op.name, dtype)]


def _sample(op, device, dtype, name):
    (sample,) = [s for s in sample_inputs(op, device, dtype) if s.name == name]
    return sample


def _tol(dtype):
    return dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-4, atol=1e-5)


def _scaled_tol(dtype, out):
    tol = _tol(dtype)
    scale = float(out.detach().abs().max()) if out.numel() else 1.0
    return dict(rtol=tol["rtol"], atol=tol["atol"] * max(scale, 1e-300))


def same_partition(a, b):
    """Labels equal up to renaming of the clusters (−1 stays −1)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def _outputs(op, sample):
    """The op's outputs as a tuple of tensors (functional API)."""
    out = getattr(F, op)(*sample.args, **sample.kwargs)
    return out if isinstance(out, tuple) else (out,)


def _reference(op, sample):
    out = getattr(R, op)(*sample.args, **sample.kwargs)
    return out if isinstance(out, tuple) else (out,)


def _weighted_loss(outputs, seed=3):
    """A fixed random weighting of the differentiable (floating) outputs."""
    total = 0
    g = torch.Generator().manual_seed(seed)
    for out in outputs:
        if out.is_floating_point():
            w = torch.randn(out.shape, generator=g, dtype=out.dtype).to(out.device)
            total = total + (w * out).sum()
    return total


def _check_same(op, sample, got, want, dtype):
    if op == "kmeans":
        (c, labels), (rc, rlabels) = got, want
        if sample.exact_labels:
            assert torch.equal(labels.cpu(), rlabels.cpu())
            torch.testing.assert_close(c.cpu(), rc.cpu(), **_scaled_tol(dtype, rc))
        else:
            for a, b in zip(labels.reshape(-1, labels.shape[-1]).cpu(), rlabels.reshape(-1, labels.shape[-1]).cpu()):
                assert same_partition(a, b)
        return
    for a, b in zip(got, want):
        if a.is_floating_point():
            torch.testing.assert_close(a.cpu(), b.cpu().to(a.dtype), **_scaled_tol(dtype, b))
        else:
            assert torch.equal(a.cpu(), b.cpu())


def test_every_op_has_samples():
    for op in OPS:
        assert len(sample_names(op.name)) >= 8, op.name
        assert hasattr(F, op.name) and hasattr(R, op.name), op.name


@pytest.mark.parametrize("op,device,dtype,name", CASES)
def test_matches_the_reference(op, device, dtype, name):
    sample = _sample(op, device, dtype, name)
    _check_same(op, sample, _outputs(op, sample), _reference(op, sample), dtype)
    if op in DIFFERENTIABLE and sample.smooth:
        grads = []
        for fn in (_outputs, _reference):
            s = sample.with_grad()
            leaves = [t for t in s.leaves if t.requires_grad]
            grads.append(torch.autograd.grad(_weighted_loss(fn(op, s)), leaves))
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, **_scaled_tol(dtype, b))


@pytest.mark.parametrize("op,device,dtype,name", CASES)
def test_opcheck(op, device, dtype, name):
    sample = _sample(op, device, dtype, name).with_grad()
    for overload, args in raw_calls(op, sample.args, sample.kwargs):
        torch.library.opcheck(overload, args)


@pytest.mark.parametrize("op,device,dtype,name", [c for c in CASES if c.values[0] == "cluster_css"])
def test_css_given_sizes_change_nothing(op, device, dtype, name):
    """cluster_css with the member counts given (the CUDA kernel then plans its batches from them
    without reading the device): the same values, counts, bases and gradients; wrong sizes refused."""
    from dse_ext._ops.cluster_css import prepare

    sample = _sample(op, device, dtype, name)
    b, labels = prepare(*sample.args)
    k = sample.args[2]
    sizes = member_sizes(labels, k)
    x = b.x.detach().double()
    plain = torch.ops.dse.cluster_css(x, labels, k, True)
    given = torch.ops.dse.cluster_css(x, labels, k, True, sizes)
    for a, c in zip(plain, given):
        assert torch.equal(a, c)
    grad = torch.linspace(-1, 1, labels.shape[0] * k, dtype=torch.float64, device=x.device).reshape(-1, k)
    assert torch.equal(torch.ops.dse.cluster_css_backward(grad, x, labels, k, None, None, sizes),
                       torch.ops.dse.cluster_css_backward(grad, x, labels, k))
    if device == "cpu":  # on CUDA a wrong size is a device-side assertion, which ends the process's CUDA use
        wrong = sizes.clone()
        wrong[0, 0] += 1
        with pytest.raises(RuntimeError, match="sizes must be the member counts of labels"):
            torch.ops.dse.cluster_css(x, labels, k, False, wrong)


@pytest.mark.parametrize("op,device,dtype,name", [c for c in CASES if c.values[0] in DIFFERENTIABLE
                                                  and c.values[2] == torch.float64])
def test_gradcheck(op, device, dtype, name):
    sample = _sample(op, device, dtype, name).with_grad()
    if not sample.smooth:
        pytest.skip("not differentiable at this input (repeated or zero singular values, ties)")
    leaves = [t for t in sample.leaves if t.requires_grad]
    others = sample.leaves

    def fn(*float_leaves):
        it = iter(float_leaves)
        rebuilt = [next(it) if t.requires_grad else t for t in others]
        return tuple(o for o in _outputs(op, type(sample)(sample.name, sample.build, tuple(rebuilt), sample.kwargs))
                     if o.is_floating_point())

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("op,device,dtype,name", CASES)
def test_deterministic_and_global_rng_untouched(op, device, dtype, name):
    sample = _sample(op, device, dtype, name)
    cpu_state = torch.random.get_rng_state()
    cuda_state = torch.cuda.get_rng_state() if device == "cuda" else None
    results = []
    for _ in range(2):
        s = sample.with_grad() if op in DIFFERENTIABLE else sample
        outputs = _outputs(op, s)
        grads = ()
        if op in DIFFERENTIABLE:
            grads = torch.autograd.grad(_weighted_loss(outputs), [t for t in s.leaves if t.requires_grad])
        results.append([t.detach() for t in (*outputs, *grads)])
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), cpu_state)
    if cuda_state is not None:
        assert torch.equal(torch.cuda.get_rng_state(), cuda_state)


@pytest.mark.parametrize("op,device,dtype,name", [c for c in CASES if c.values[1] != "cpu"])
def test_matches_the_cpu(op, device, dtype, name):
    here, cpu = _sample(op, device, dtype, name), _sample(op, "cpu", dtype, name)
    _check_same(op, here, _outputs(op, here), _outputs(op, cpu), dtype)
    if op in DIFFERENTIABLE:
        grads = []
        for s in (here.with_grad(), cpu.with_grad()):
            grads.append(torch.autograd.grad(_weighted_loss(_outputs(op, s)), [t for t in s.leaves if t.requires_grad]))
        for a, b in zip(*grads):
            torch.testing.assert_close(a.cpu(), b, **_scaled_tol(dtype, b))
