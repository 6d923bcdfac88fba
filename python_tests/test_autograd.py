"""Gradients of the differentiable ops: gradcheck, the reference's autograd, degenerate spectra,
opcheck of the autograd registration and torch.compile."""

import pytest
import torch
from torch.autograd import gradcheck

from dse_ext import functional as F
from dse_ext import reference as R


def f64(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)


# ------------------------------------------------------------------ gradcheck (float64)
@pytest.mark.parametrize("P,M,d,k", [(3, 20, 6, 3), (2, 30, 4, 1), (2, 12, 9, 4)])
def test_css_gradcheck(gen, P, M, d, k):
    x = f64(gen, P, M, d)
    labels = torch.randint(-1, k, (P, M), generator=gen)  # -1: ignored points
    assert gradcheck(lambda x: F.cluster_css(x, labels, k)[0], (x,))


@pytest.mark.parametrize("shape", [(3, 5, 9), (2, 9, 5), (1, 4, 4)])
def test_effective_rank_gradcheck(gen, shape):
    assert gradcheck(F.effective_rank, (f64(gen, *shape),))


def test_effective_rank_index_gradcheck(gen):
    table = f64(gen, 30, 7)
    index = torch.randint(0, 30, (5, 4), generator=gen)  # rows may repeat
    assert gradcheck(lambda t: F.effective_rank(t, index=index), (table,))


def test_nearest_other_gradcheck(gen):
    x, c = f64(gen, 2, 15, 5), f64(gen, 2, 4, 5)
    labels = torch.randint(-1, 4, (2, 15), generator=gen)
    valid = torch.tensor([[True, False, True, True], [True, True, True, True]])
    assert gradcheck(lambda x, c: F.nearest_other_centroid_distance(x, c, labels, valid), (x, c))


# ------------------------------------------------------------------ against the reference's autograd
def grads(fn, *inputs):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    weights = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    return [t.grad for t in inputs]


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_gradients_match_reference(gen, dtype, rtol):
    x = torch.randn(3, 40, 8, generator=gen, dtype=dtype)
    labels = torch.randint(0, 3, (3, 40), generator=gen)
    c = torch.randn(3, 3, 8, generator=gen, dtype=dtype)
    for fn_ext, fn_ref, inputs in [
        (lambda x: F.cluster_css(x, labels, 3)[0], lambda x: R.cluster_css(x, labels, 3)[0], (x,)),
        (F.effective_rank, R.effective_rank, (x,)),
        (lambda x: F.effective_rank(x.transpose(1, 2)), lambda x: R.effective_rank(x.transpose(1, 2)), (x,)),
        (lambda x, c: F.nearest_other_centroid_distance(x, c, labels),
         lambda x, c: R.nearest_other_centroid_distance(x, c, labels), (x, c)),
    ]:
        for g_ext, g_ref in zip(grads(fn_ext, *inputs), grads(fn_ref, *inputs)):
            torch.testing.assert_close(g_ext, g_ref, rtol=rtol, atol=rtol * float(g_ref.abs().max()))


@pytest.mark.parametrize("d", [6, 400])  # tall and wide clusters of > 128 points
def test_css_backward_with_kept_basis(gen, d):
    # Large clusters: the forward keeps its Gram eigenbases and the backward reuses them.
    x = torch.randn(2, 300, d, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 2, (2, 300), generator=gen)
    from dse_ext._ops.cluster_css import keep_basis as _keep_basis

    assert _keep_basis(x.requires_grad_(True), 2)
    (kept,) = grads(lambda x: F.cluster_css(x, labels, 2)[0], x)
    (fresh,) = grads(lambda x: torch.ops.dse.cluster_css(x, labels, 2, False)[0], x)
    (ref,) = grads(lambda x: R.cluster_css(x, labels, 2)[0], x)
    torch.testing.assert_close(kept, fresh, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(kept, ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("shape", [(1, 300, 20), (2, 140, 150)])  # tall, and wide matrices of > 128 rows
def test_effective_rank_backward_with_kept_basis(gen, shape):
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    from dse_ext._ops.effective_rank import keep_basis as _keep_rank_basis

    assert _keep_rank_basis(x.requires_grad_(True), *shape)
    (kept,) = grads(F.effective_rank, x)
    (fresh,) = grads(lambda x: torch.ops.dse.effective_rank(x, None, False)[0], x)
    (ref,) = grads(R.effective_rank, x)
    torch.testing.assert_close(kept, fresh, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(kept, ref, rtol=1e-8, atol=1e-12)


# ------------------------------------------------------------------ css forward with its gradient (CPU)
CSS_FUSED_CASES = [(4, 196, 384, 3), (2, 300, 20, 2), (2, 400, 150, 2), (1, 50, 384, 1), (2, 30, 8, 4),
                   (3, 200, 384, 1)]  # small and tall clusters, clusters over 128 points, a lone cluster


@pytest.mark.parametrize("P,M,d,k", CSS_FUSED_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_css_with_gradient_gives_the_forward_values_and_the_backward_gradient(gen, P, M, d, k, dtype):
    x = torch.nn.functional.normalize(torch.randn(P, M, d, generator=gen, dtype=dtype), dim=-1)
    labels = torch.randint(0, k, (P, M), generator=gen)
    labels[0, :3] = -1  # ignored points
    if k >= 2:
        labels[-1, labels[-1] == k - 1] = 0  # an empty cluster
        labels[-1, 5] = k - 1                # ... now a cluster of one point
    values, counts, _, _ = torch.ops.dse.cluster_css(x, labels, k, False)
    fused_values, fused_counts, unit = torch.ops.dse.cluster_css_with_gradient(x, labels, k)
    assert torch.equal(fused_values, values) and torch.equal(fused_counts, counts)  # the same bits
    ones = torch.ones(P, k, dtype=torch.float64)
    expected = torch.ops.dse.cluster_css_backward(ones, x, labels, k)
    torch.testing.assert_close(unit, expected, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                               atol=1e-6 * float(expected.abs().max()) if dtype == torch.float32 else 1e-14)
    assert not unit[labels < 0].any()  # ignored points
    if k >= 2:
        assert not unit[-1, 5].any()  # the lone point


def test_css_with_gradient_is_what_the_functional_op_uses_when_a_gradient_is_needed(gen, monkeypatch):
    from dse_ext._ops import cluster_css as C

    x = torch.randn(3, 60, 16, generator=gen, requires_grad=True)
    labels = torch.randint(-1, 3, (3, 60), generator=gen)
    assert C.fused_gradient(x, 3) and not C.fused_gradient(x.detach(), 3)
    with torch.no_grad():
        assert not C.fused_gradient(x, 3)
    upstream = torch.randn(3, 3, generator=gen)
    values = F.cluster_css(x, labels, 3)[0]
    (fused,) = torch.autograd.grad(values, x, upstream)
    monkeypatch.setattr(C, "fused_gradient", lambda x, k: False)
    plain_values = F.cluster_css(x, labels, 3)[0]
    (plain,) = torch.autograd.grad(plain_values, x, upstream)
    assert torch.equal(values, plain_values)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6 * float(plain.abs().max()))
    (ref,) = torch.autograd.grad(R.cluster_css(x, labels, 3)[0], x, upstream)
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_css_with_gradient_upstream_inf_on_a_lone_point_stays_out_of_other_rows(gen):
    x = torch.randn(1, 20, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.zeros(1, 20, dtype=torch.long)
    labels[0, 0] = 1  # cluster 1: one point, no value, no gradient
    labels[0, 1] = -1
    values = F.cluster_css(x, labels, 2)[0]
    (grad,) = torch.autograd.grad(values, x, torch.tensor([[1.0, float("inf")]], dtype=torch.float64))
    assert torch.isfinite(grad).all() and not grad[0, 0].any() and not grad[0, 1].any()


def test_css_with_gradient_refuses_a_second_order(gen):
    from dse_ext import DoubleBackwardError

    x = torch.randn(2, 40, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 2, (2, 40), generator=gen)
    (g,) = torch.autograd.grad(F.cluster_css(x, labels, 2)[0].sum(), x, create_graph=True)
    with pytest.raises(DoubleBackwardError, match="cluster_css"):
        g.sum().backward()


# ------------------------------------------------------------------ degenerate spectra
def test_degenerate_spectra_give_finite_gradients(gen):
    base = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    # cluster 0: every point twice (rank-deficient); cluster 1: two identical points; cluster 2: empty
    x = torch.cat([base, base, torch.ones(2, 5, dtype=torch.float64)]).unsqueeze(0).requires_grad_(True)
    labels = torch.tensor([[0] * 12 + [1, 1]])
    v, n = F.cluster_css(x, labels, 3)
    v.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.all(x.grad[0, 12:] == 0)  # two identical points: css = 0 and flat

    q = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))[0][:3]  # repeated sigma = 1
    for s in (q, torch.zeros(3, 8, dtype=torch.float64), torch.ones(3, 8, dtype=torch.float64)):
        s = s.clone().requires_grad_(True)
        F.effective_rank(s).backward()
        assert torch.isfinite(s.grad).all()
    # at orthonormal rows erank = 1 is maximal: the gradient vanishes
    s = q.clone().requires_grad_(True)
    F.effective_rank(s).backward()
    assert float(s.grad.abs().max()) < 1e-10

    x = torch.zeros(1, 4, 3, dtype=torch.float64, requires_grad=True)  # points on the other centroid
    c = torch.zeros(1, 2, 3, dtype=torch.float64, requires_grad=True)
    F.nearest_other_centroid_distance(x, c, torch.tensor([[0, 1, 0, 1]])).sum().backward()
    assert torch.all(x.grad == 0) and torch.all(c.grad == 0)


def test_kmeans_is_not_differentiable(gen):
    x = torch.randn(2, 20, 4, generator=gen, requires_grad=True)
    c, labels = F.kmeans(x, 3)
    assert not c.requires_grad and labels.dtype == torch.long


# ------------------------------------------------------------------ compile (opcheck: test_op_table.py)
def test_compile_matches_eager_forward_and_backward(gen):
    x0 = torch.randn(4, 16, 8, generator=gen)
    labels = torch.randint(0, 3, (4, 16), generator=gen)
    c0 = torch.randn(4, 3, 8, generator=gen)

    def loss(x, c):
        v = torch.ops.dse.cluster_css(x, labels, 3)[0]
        r = torch.ops.dse.effective_rank(x)[0]
        dist = torch.ops.dse.nearest_other_centroid_distance(x, c, labels, None)
        return v.sum() + r.sum() + dist.mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (loss, compiled):
        x, c = x0.clone().requires_grad_(True), c0.clone().requires_grad_(True)
        out = fn(x, c)
        out.backward()
        results.append((out.detach(), x.grad, c.grad))
    for eager, comp in zip(*results):
        torch.testing.assert_close(comp, eager)


# ------------------------------------------------------------------ avg_l2 (metric._mean_distance_to_mean)
def _avg_l2_plain(x):
    """The pure-PyTorch twin: autograd through the whole-batch formula."""
    return (x - x.mean(dim=(0, 1))).norm(dim=-1).mean()


@pytest.mark.parametrize("block_bytes", [1, 5 * 4 * 8, 1 << 21])  # one image per block, 5 per block, one block
def test_avg_l2_gradcheck_over_blocks(gen, block_bytes):
    from dse_ext.metric import _mean_distance_to_mean

    x = f64(gen, 7, 4, 3)
    assert gradcheck(lambda x: _mean_distance_to_mean(x, block_bytes), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_avg_l2_matches_autograd_of_the_plain_formula(gen, dtype):
    from dse_ext.metric import _mean_distance_to_mean

    x = torch.randn(9, 13, 6, generator=gen, dtype=dtype)
    x[4, 7] = x.mean(dim=(0, 1)) * 0  # adversarial rows: a token at the origin, a token far out
    x[2, 3] *= 1e3
    x.requires_grad_(True)
    value = _mean_distance_to_mean(x, block_bytes=2 * 13 * 6 * x.element_size())
    expected = _avg_l2_plain(x)
    torch.testing.assert_close(value, expected)
    got, = torch.autograd.grad(3.5 * value, x)
    want, = torch.autograd.grad(3.5 * expected, x)
    torch.testing.assert_close(got, want)


def test_avg_l2_token_at_the_mean_gets_the_mean_term_only():
    """A token exactly at x̄ has no direction of its own (0, as autograd's norm gives): its gradient
    is −ū·grad/(B·N), from x̄ alone."""
    from dse_ext.metric import _mean_distance_to_mean

    x = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]], [[0.0, 0.0], [0.0, 3.0]], [[0.0, -3.0], [0.0, 0.0]]],
                     dtype=torch.float64, requires_grad=True)  # mean (0, 0): the tokens (0, 0) sit on it
    got, = torch.autograd.grad(_mean_distance_to_mean(x), x)
    want, = torch.autograd.grad(_avg_l2_plain(x), x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want)


def test_avg_l2_first_order_with_create_graph_and_no_second_order(gen):
    from dse_ext.metric import _mean_distance_to_mean

    x = f64(gen, 3, 4, 5)
    g, = torch.autograd.grad(_mean_distance_to_mean(x), x, create_graph=True)
    want, = torch.autograd.grad(_avg_l2_plain(x), x)
    torch.testing.assert_close(g, want)
    from dse_ext import DoubleBackwardError

    with pytest.raises(DoubleBackwardError, match="double backward through dse_ext's"):
        g.pow(2).sum().backward()


# ------------------------------------------------------------------ token normalization (metric._unit_tokens)
def _unit_tokens_autograd(x):
    """The pure-PyTorch twin of metric._unit_tokens for tokens within 2**±50: autograd through
    the norm and the division, with the same constant divisor for zero and tiny tokens."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    with torch.no_grad():
        zero = norm == 0
        bound = norm.max() * 2.0 ** -40
        tiny = ~zero & (norm < bound)
        fixed = torch.where(zero, torch.full_like(norm, float("inf")), bound.expand_as(norm))
        ordinary = ~(zero | tiny)
    return x / torch.where(ordinary, norm, fixed)


@pytest.mark.parametrize("special", ["none", "zero", "tiny", "zero+tiny"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unit_tokens_gradient_matches_autograd(gen, special, dtype):
    from dse_ext.metric import _unit_tokens

    x = torch.randn(5, 7, 6, generator=gen, dtype=dtype)
    if "zero" in special:
        x[1, 2] = 0
        x[3, 0] = 0
    if "tiny" in special:
        x[2, 5] *= 2.0 ** -45  # below 2**-40 of the longest token: divided by that bound
    x.requires_grad_(True)
    out, finite = _unit_tokens(x)
    want = _unit_tokens_autograd(x)
    assert bool(finite)
    if "tiny" in special:  # the twin's bound ‖x‖max · 2**-40 rounds differently from the log2 form
        torch.testing.assert_close(out, want)
    else:
        torch.testing.assert_close(out, want, rtol=0, atol=0)  # the forward is the same division
    g = torch.randn(out.shape, generator=gen, dtype=dtype)
    got, = torch.autograd.grad(out, x, g)
    expected, = torch.autograd.grad(want, x, g)
    torch.testing.assert_close(got, expected)
    if "zero" in special:
        assert (got[1, 2] == 0).all() and (got[3, 0] == 0).all()


def test_unit_tokens_gradcheck(gen):
    """Ordinary tokens of several lengths (zero and tiny tokens are discontinuities by design:
    their gradients are checked against the twin above)."""
    from dse_ext.metric import _unit_tokens

    x = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64) * torch.logspace(-3, 3, 4, dtype=torch.float64)[:, None]
    x.requires_grad_(True)
    assert gradcheck(lambda x: _unit_tokens(x)[0], (x,))


def test_unit_tokens_first_order_with_create_graph_and_no_second_order(gen):
    from dse_ext import DoubleBackwardError
    from dse_ext.metric import _unit_tokens

    x = f64(gen, 3, 4, 5)
    g, = torch.autograd.grad(_unit_tokens(x)[0].sum(), x, create_graph=True)
    want, = torch.autograd.grad(_unit_tokens_autograd(x).sum(), x)
    torch.testing.assert_close(g, want)
    with pytest.raises(DoubleBackwardError, match="double backward through dse_ext's"):
        g.pow(2).sum().backward()
