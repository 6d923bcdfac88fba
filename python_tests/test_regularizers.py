"""DSERegularizer, DSARegularizer and the crowding diagnostics, with evidence that they do what they claim."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dse_ext


# ------------------------------------------------------------------ DSE regularizer
def test_dse_regularizer_is_minus_weight_times_dse(gen):
    tokens = torch.randn(6, 20, 12, generator=gen)
    reg = dse_ext.DSERegularizer(weight=0.5, seed=3)
    loss = reg(tokens)
    ref = dse_ext.dse(tokens, group_size=8, m_dim="pooled", seed=3)
    torch.testing.assert_close(loss, -0.5 * ref.dse)
    assert reg.last is not None and not reg.last.dse.requires_grad
    torch.testing.assert_close(reg.last.dse, ref.dse)


def test_dse_regularizer_groups_by_8_images_like_the_released_regularizer(gen):
    # The released regularizer clusters globally over groups of global_clusters // local_clusters
    # = 24 // 3 = 8 consecutive images (the last group smaller): 20 images are groups of 8, 8, 4.
    tokens = torch.randn(20, 30, 12, generator=gen)
    reg = dse_ext.DSERegularizer(weight=1.0, seed=5)
    assert reg.group_size == 8
    loss = reg(tokens)
    grouped = dse_ext.dse(tokens, group_size=8, m_dim="pooled", seed=5)
    whole = dse_ext.dse(tokens, group_size=None, m_dim="pooled", seed=5)
    torch.testing.assert_close(loss, -grouped.dse)
    assert not torch.allclose(grouped.m_inter, whole.m_inter)  # the grouping is not the whole batch
    whole_reg = dse_ext.DSERegularizer(weight=1.0, group_size=None, seed=5)
    torch.testing.assert_close(whole_reg(tokens), -whole.dse)
    assert "group_size=8" in repr(reg) and "group_size=None" in repr(whole_reg)


def test_dse_regularizer_gradient_and_mixed_precision(gen):
    reg = dse_ext.DSERegularizer()
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        tokens = torch.randn(4, 16, 8, generator=gen).to(dtype).requires_grad_(True)
        loss = reg(tokens)
        assert loss.dtype == torch.float32 and loss.shape == ()
        loss.backward()
        assert tokens.grad.dtype == dtype and torch.isfinite(tokens.grad.float()).all()
        assert float(tokens.grad.float().abs().max()) > 0


@pytest.mark.parametrize("group_size", [8, None])
def test_dse_regularizer_backward_adds_the_gradients_in_place(gen, group_size):
    # Every part of the metric sends a token-sized gradient to the normalized tokens. Autograd
    # adds into the first one that arrives unless it is a view (the pooled tokens of M_dim,
    # the groups of images): then each sum is a fresh token-sized tensor (dse() orders its parts
    # so that it is not). Counted with the profiler: no out-of-place token-sized addition.
    from torch.profiler import ProfilerActivity, profile

    tokens = torch.randn(16, 20, 12, generator=gen).requires_grad_(True)
    loss = dse_ext.DSERegularizer(group_size=group_size)(tokens)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, acc_events=True) as prof:
        loss.backward()
    sums = [(e.name, e.input_shapes[0]) for e in prof.events()
            if e.name in ("aten::add", "aten::add_") and e.input_shapes and len(e.input_shapes[0]) == 3
            and math.prod(e.input_shapes[0]) == tokens.numel()]
    assert sums and all(name == "aten::add_" for name, _ in sums), sums


def test_dse_regularizer_under_autocast_computes_in_float32(gen):
    tokens = torch.randn(6, 40, 16, generator=gen, requires_grad=True)
    reg = dse_ext.DSERegularizer(seed=1)
    plain = reg(tokens)
    plain.backward()
    grad = tokens.grad.clone()
    tokens.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = reg(tokens)
    mixed.backward()
    torch.testing.assert_close(mixed, plain)
    torch.testing.assert_close(tokens.grad, grad)


def test_dse_regularizer_seeds_and_global_rng(gen):
    tokens = torch.randn(4, 30, 8, generator=gen)
    state = torch.get_rng_state()
    a, b = dse_ext.DSERegularizer(), dse_ext.DSERegularizer()
    seq_a = [float(a(tokens)) for _ in range(3)]
    seq_b = [float(b(tokens)) for _ in range(3)]
    assert seq_a == seq_b  # reproducible from run to run
    assert len(set(seq_a)) > 1  # a new clustering seed at every step
    fixed = dse_ext.DSERegularizer(seed=7)
    assert len({float(fixed(tokens)) for _ in range(3)}) == 1
    assert torch.equal(state, torch.get_rng_state())


def test_dse_regularizer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="m_dim"):
        dse_ext.DSERegularizer(m_dim="mean")
    with pytest.raises(ValueError, match="global_clusters"):
        dse_ext.DSERegularizer(global_clusters=1)
    with pytest.raises(TypeError, match="seed"):
        dse_ext.DSERegularizer(seed=1.5)
    with pytest.raises(ValueError, match=r"\(B, N, d\)"):
        dse_ext.DSERegularizer()(torch.randn(4, 8))


def test_gradient_ascent_on_dse_raises_dse(gen):
    tokens = nn.Parameter(torch.randn(8, 24, 16, generator=gen))
    reg = dse_ext.DSERegularizer(weight=1.0, seed=0)
    measure = lambda: float(dse_ext.dse(tokens.detach(), group_size=8, m_dim="pooled", seed=0).dse)  # noqa: E731
    before = measure()
    opt = torch.optim.Adam([tokens], lr=0.05)
    for _ in range(25):
        opt.zero_grad()
        reg(tokens).backward()  # minimizing -DSE
        opt.step()
    after = measure()
    assert after > before + 0.1, (before, after)


# ------------------------------------------------------------------ crowding
def test_crowding_hand_computed():
    x = torch.tensor([[0.0], [2.0], [10.0], [12.0]])
    out = dse_ext.crowding(x, torch.tensor([0, 0, 1, 1]))
    assert float(out.intra_variance) == pytest.approx(1.0)  # every point 1 from its class mean
    assert float(out.inter_separation) == pytest.approx(100.0)  # class means 1 and 11
    assert float(out.ratio) == pytest.approx(0.01)
    three = dse_ext.crowding(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 0, 5]))
    assert float(three.intra_variance) == pytest.approx(2 / 3)  # (1 + 1 + 0) / 3
    assert float(three.inter_separation) == pytest.approx(17.0)  # |(1, 0) - (0, 4)|^2


def test_crowding_tokens_and_errors(gen):
    x = torch.randn(2, 5, 3, generator=gen)
    labels = torch.randint(0, 3, (2, 5), generator=gen)
    labels[0, 0], labels[0, 1] = 0, 1
    torch.testing.assert_close(dse_ext.crowding(x, labels).ratio, dse_ext.crowding(x.reshape(10, 3), labels.reshape(10)).ratio)
    with pytest.raises(ValueError, match="two classes"):
        dse_ext.crowding(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        dse_ext.crowding(torch.randn(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="one class per sample"):
        dse_ext.crowding(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))


# ------------------------------------------------------------------ DSA
def make_dsa(dim, seed=0, **kw):
    with torch.random.fork_rng():  # deterministic MLP initialisation, global RNG restored after
        torch.manual_seed(seed)
        return dse_ext.DSARegularizer(dim, **kw)


def test_dsa_shapes_gradients_and_parameters(gen):
    dsa = make_dsa(8)
    z1 = torch.randn(30, 8, generator=gen, requires_grad=True)
    z2 = torch.randn(30, 8, generator=gen, requires_grad=True)
    loss = dsa(z1, z2)
    assert loss.shape == () and math.isfinite(float(loss.detach()))
    loss.backward()
    assert torch.isfinite(z1.grad).all() and float(z1.grad.abs().max()) > 0
    assert all(p.grad is not None for p in dsa.parameters())  # the MLP learns (from the anchor term)
    m = dsa.regulation(torch.randn(5, 8, generator=gen))
    assert m.shape == (5, 5) and torch.all((m >= 0) & (m <= 1)) and torch.allclose(m, m.t())
    with pytest.raises(ValueError, match=r"shape \(B, 8\)"):
        dsa(torch.randn(4, 7), torch.randn(4, 7))
    with pytest.raises(ValueError, match="prior"):
        dsa(z1, z2, prior=torch.randn(3, 4))


def test_dsa_reliability_marks_outliers(gen):
    dsa = make_dsa(2, eta=3, mu=1)
    # in blobs of eta + 1 points every neighbourhood is the blob: all reciprocal
    blob_a = torch.randn(4, 2, generator=gen) * 0.01 + torch.tensor([1.0, 0.0])
    blob_b = torch.randn(4, 2, generator=gen) * 0.01 + torch.tensor([0.0, 1.0])
    far = torch.tensor([[-40.0, -40.0]])
    s = dsa.reliability(torch.cat([blob_a, blob_b, far]))
    assert float(s[-1]) == 0.0  # nobody has the far point among its 3 nearest neighbours
    assert torch.all(s[:-1] == 1)
    # mu > eta made every anchor an outlier (a constant adjustment term): refused now; the
    # all-outlier case itself is tested in test_faults_gradients.py
    with pytest.raises(ValueError, match="mu = 3 > eta = 2"):
        make_dsa(4, eta=2, mu=3)


def _train_embedding(use_dsa: bool, seed: int, steps: int = 150) -> float:
    """Contrastive (InfoNCE) training of a small MLP embedding on 4 Gaussian classes, with or
    without DSA (prior: the un-augmented inputs); returns the crowding ratio on held-out data."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 16, generator=g) * 2.0

    def sample(n):
        y = torch.randint(0, 4, (n,), generator=g)
        return centers[y] + torch.randn(n, 16, generator=g), y

    encoder = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16))
    for p in encoder.parameters():
        nn.init.normal_(p, std=0.2, generator=g)
    dsa = make_dsa(16, seed, eta=10, lambda1=5.0, tau_prior=2.0)
    opt = torch.optim.Adam(list(encoder.parameters()) + list(dsa.parameters()), lr=3e-3)
    for _ in range(steps):
        x, _ = sample(128)
        z1 = encoder(x + 0.3 * torch.randn(x.shape, generator=g))
        z2 = encoder(x + 0.3 * torch.randn(x.shape, generator=g))
        logits = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).t() / 0.2
        loss = F.cross_entropy(logits, torch.arange(128))
        if use_dsa:
            loss = loss + dsa(z1, z2, prior=x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = sample(2000)
    with torch.no_grad():
        return float(dse_ext.crowding(F.normalize(encoder(x), dim=1), y).ratio)


@pytest.mark.parametrize("seed", [0, 1])
def test_dsa_lowers_crowding(seed):
    plain, adjusted = _train_embedding(False, seed), _train_embedding(True, seed)
    assert adjusted < 0.85 * plain, (plain, adjusted)
