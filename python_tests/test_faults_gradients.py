"""Bad but legal inputs: zero and tiny tokens, double backward, extreme scales, fewer distinct
tokens than clusters, non-finite values at the checked boundary, bad seeds, DSA settings that
make every sample an outlier."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as NF

import dse_ext
from dse_ext import functional as F
from dse_ext import reference as R
from dse_ext import DoubleBackwardError
from dse_ext.metric import DSEOutput

FIELDS = DSEOutput._fields
BACKENDS = ("ext", "reference")


def assert_outputs_close(a, b, rtol, atol=0.0, avg_l2_factor=1.0):
    for name in FIELDS:
        expected = getattr(b, name) * avg_l2_factor if name == "avg_l2" else getattr(b, name)
        torch.testing.assert_close(getattr(a, name), expected, rtol=rtol, atol=atol, msg=name)


def times_pow2(t, exponent):
    """``t · 2**exponent`` in t's dtype, in two exact steps (2**140 itself is not a float32)."""
    half = exponent // 2
    return t * 2.0**half * 2.0**(exponent - half)


def labels_for(x, k_l, k_g):
    """Fixed k-means labels (one group), so that two computations cluster alike."""
    B, N, d = x.shape
    xn = NF.normalize(x.double(), dim=-1)
    _, local = F.kmeans(xn, k_l)
    _, glob = F.kmeans(xn.reshape(1, B * N, d), k_g)
    return local, glob.reshape(B, N)


# ------------------------------------------------------------------ 1. all-zero (and tiny) tokens
def with_zero_rows(gen, B=6, N=20, d=12, dtype=torch.float32):
    x = torch.relu(torch.randn(B, N, d, generator=gen, dtype=dtype))
    dead = torch.rand(B, N, generator=gen) < 0.2
    dead[0, :3] = True
    x[dead] = 0
    return x, dead


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_tokens_get_a_zero_finite_gradient(gen, backend):
    x, dead = with_zero_rows(gen)
    x.requires_grad_(True)
    reg = dse_ext.DSERegularizer(weight=1e-3, global_clusters=6, seed=0, backend=backend)
    reg(x).backward()
    assert torch.isfinite(x.grad).all()
    assert torch.all(x.grad[dead] == 0)
    assert float(x.grad[~dead].abs().max()) > 0  # F.normalize gave the dead rows ~1e12 x the upstream gradient


def test_normalization_unchanged_without_zero_rows(gen):
    # The same labels for both: the normalisation inside dse against F.normalize outside it.
    x = torch.randn(5, 24, 10, generator=gen, dtype=torch.float64)
    local, glob = labels_for(x, 3, 5)
    kw = dict(local_clusters=3, global_clusters=5, group_size=None, local_labels=local, global_labels=glob)
    a = x.clone().requires_grad_(True)
    out = dse_ext.dse(a, **kw)
    out.dse.backward()
    b = x.clone().requires_grad_(True)
    old = dse_ext.dse(NF.normalize(b, dim=-1), normalize=False, **kw)
    old.dse.backward()
    assert_outputs_close(out, old, rtol=1e-12)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-14)


def test_zero_rows_leave_the_normalized_tokens_alone(gen):
    x, dead = with_zero_rows(gen, dtype=torch.float64)
    u, _ = dse_ext.metric._unit_tokens(x)
    assert torch.all(u[dead] == 0)
    torch.testing.assert_close(u[~dead], NF.normalize(x[~dead], dim=-1), rtol=1e-15, atol=0)


def test_tiny_tokens_get_bounded_gradients(gen):
    x = torch.randn(4, 16, 8, generator=gen)
    x[1, 2] *= 1e-25  # far below 2**-40 of the largest token: divided by the bound, not its norm
    x[2, 5] *= 1e-8  # small but ordinary: normalised to length 1
    x.requires_grad_(True)
    u, _ = dse_ext.metric._unit_tokens(x)
    torch.testing.assert_close(u[2, 5].norm(), torch.tensor(1.0))
    assert float(u[1, 2].detach().norm()) < 1e-6
    dse_ext.dse(x, global_clusters=4).dse.backward()
    assert torch.isfinite(x.grad).all()
    largest = float(x.detach().norm(dim=-1).max())
    assert float(x.grad[1, 2].abs().max()) <= 2.0**40 / largest


# ------------------------------------------------------------------ 2. double backward raises
def f64(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)


def differentiable_ops(gen):
    labels = torch.randint(0, 3, (2, 12), generator=gen)
    yield "cluster_css", (lambda x: F.cluster_css(x, labels, 3)[0]), (f64(gen, 2, 12, 4),)
    yield "effective_rank", F.effective_rank, (f64(gen, 2, 7, 5),)
    yield "nearest_other_centroid_distance", (lambda x, c: F.nearest_other_centroid_distance(x, c, labels)), (
        f64(gen, 2, 12, 4), f64(gen, 2, 3, 4))


@pytest.mark.parametrize("which", range(3))
def test_double_backward_raises_naming_the_op(gen, which):
    name, fn, inputs = list(differentiable_ops(gen))[which]
    with pytest.raises(DoubleBackwardError, match=rf"double backward through dse::{name} is not supported"):
        torch.autograd.gradgradcheck(fn, inputs)
    # first order with create_graph=True works and agrees with the plain backward
    plain = torch.autograd.grad(fn(*inputs).sum(), inputs)
    graph = torch.autograd.grad(fn(*inputs).sum(), inputs, create_graph=True)
    for p, g in zip(plain, graph):
        torch.testing.assert_close(g.detach(), p, rtol=1e-12, atol=0)
    assert graph[0].requires_grad
    with pytest.raises(DoubleBackwardError, match=name):
        sum((g**2).sum() for g in graph).backward()


def test_double_backward_through_dse_raises_but_create_graph_works(gen):
    x = torch.randn(4, 16, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    (plain,) = torch.autograd.grad(dse_ext.dse(x, global_clusters=4).dse, x)
    (g,) = torch.autograd.grad(dse_ext.dse(x, global_clusters=4).dse, x, create_graph=True)
    torch.testing.assert_close(g.detach(), plain, rtol=1e-12, atol=0)
    with pytest.raises(DoubleBackwardError, match="double backward through dse(::|_ext's)"):
        g.pow(2).sum().backward()


def test_gradient_penalty_on_other_terms_with_a_dse_regularizer(gen):
    # A model whose loss has a DSE term and a gradient penalty on another term: the penalty's
    # second-order gradient never flows through a dse op, so training works.
    w = torch.randn(8, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 16, 8, generator=gen, dtype=torch.float64)
    reg = dse_ext.DSERegularizer(weight=1e-2, global_clusters=4, seed=0)
    tokens = x @ w
    task = tokens.pow(2).mean()
    (task_grad,) = torch.autograd.grad(task, w, create_graph=True)
    loss = task + reg(tokens) + task_grad.pow(2).sum()
    (grad,) = torch.autograd.grad(loss, w, create_graph=True)  # through dse's first-order backward: fine
    assert torch.isfinite(grad).all() and grad.requires_grad
    # the same gradient as without create_graph
    w2 = w.detach().clone().requires_grad_(True)
    tokens2 = x @ w2
    task2 = tokens2.pow(2).mean()
    (task_grad2,) = torch.autograd.grad(task2, w2, create_graph=True)
    (task2 + reg(tokens2) + task_grad2.pow(2).sum()).backward()
    torch.testing.assert_close(grad.detach(), w2.grad, rtol=1e-10, atol=0)


# ------------------------------------------------------------------ 3. extreme but finite scales
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("exponent", [60, 70, -100, -140])
def test_power_of_two_scales_give_the_unit_scale_result(gen, backend, normalize, exponent):
    y = times_pow2(torch.randn(4, 16, 8, generator=gen), exponent)  # at -140: subnormals, fewer bits
    x = times_pow2(y, -exponent)  # the same data at unit scale (exact)
    kw = dict(normalize=normalize, local_clusters=3, global_clusters=5, group_size=None, backend=backend)
    base = dse_ext.dse(x, **kw)
    scaled = dse_ext.dse(y, **kw)
    assert_outputs_close(scaled, base, rtol=1e-6, avg_l2_factor=1.0 if normalize else 2.0**exponent)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("exponent", [60, -100])
def test_gradients_at_extreme_scales(gen, backend, normalize, exponent):
    # d/dy dse(y) at y = x·s is (d/dx dse(x)) / s for a scale-free dse.
    x = torch.randn(4, 12, 6, generator=gen)
    kw = dict(normalize=normalize, local_clusters=2, global_clusters=4, group_size=None, backend=backend)
    a = x.clone().requires_grad_(True)
    dse_ext.dse(a, **kw).dse.backward()
    y = (x * 2.0**exponent).requires_grad_(True)
    dse_ext.dse(y, **kw).dse.backward()
    assert torch.isfinite(y.grad).all()
    torch.testing.assert_close(y.grad.double() * 2.0**exponent, a.grad.double(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("normalize", [True, False])
def test_large_values_are_not_reported_as_identical(gen, normalize):
    x = torch.randn(4, 16, 8, generator=gen) * 1e20  # squares overflow float32
    out = dse_ext.dse(x, normalize=normalize, global_clusters=4)
    assert all(math.isfinite(v) for v in out.to_dict().values())
    assert out.m_inter > 0 and out.m_dim > 0


def test_identical_only_when_they_are(gen):
    with pytest.raises(ValueError, match="all tokens are identical"):
        dse_ext.dse(torch.full((3, 8, 4), 1e30), global_clusters=3, normalize=False)
    with pytest.raises(ValueError, match="all tokens are identical"):
        dse_ext.dse(torch.zeros(3, 8, 4), global_clusters=3, normalize=False)
    # the same direction at different lengths: identical after normalisation, and said so
    lengths = torch.rand(3, 8, 1, generator=gen) + 0.5
    with pytest.raises(ValueError, match="identical after L2 normalisation"):
        dse_ext.dse(lengths * torch.randn(4, generator=gen), global_clusters=3)


def test_unrepresentable_avg_l2_is_refused_with_the_cause(gen):
    x = torch.randn(4, 16, 64, generator=gen).clamp(-3, 3) * 1e38  # finite; distances exceed float32
    with pytest.raises(ValueError, match="avg_l2 .* not representable in torch.float32.*float64"):
        dse_ext.dse(x, normalize=False, global_clusters=4)
    out = dse_ext.dse(x.double(), normalize=False, global_clusters=4)
    assert math.isfinite(float(out.avg_l2)) and float(out.avg_l2) > 1e38
    assert math.isfinite(float(dse_ext.dse(x, global_clusters=4).dse))  # normalised: fine in float32


def test_non_finite_features_are_still_refused():
    x = torch.randn(4, 16, 8, generator=torch.Generator().manual_seed(0))
    x[1, 2, 3] = float("inf")
    for normalize in (True, False):
        with pytest.raises(ValueError, match="1 NaN/Inf"):
            dse_ext.dse(x, normalize=normalize, global_clusters=4)


# ------------------------------------------------------------------ 4. fewer distinct tokens than clusters
def few_distinct(gen, B, N, d, values, per_image):
    """Tokens taking only ``values`` distinct directions in the batch (``per_image`` per image)."""
    pool = torch.randn(values, d, generator=gen, dtype=torch.float64)
    choice = torch.stack([torch.randperm(values, generator=gen)[:per_image] for _ in range(B)])  # (B, per_image)
    slot = torch.arange(N).remainder(per_image).repeat(B, 1)  # every chosen value occurs in its image
    return pool[torch.gather(choice, 1, slot)], pool


def nearest_other_value_distance(x, pool):
    """M_inter by hand when every distinct token is its own cluster: mean distance to the
    nearest other distinct token, over avg_l2 (unit tokens)."""
    u = NF.normalize(x.reshape(-1, x.shape[-1]), dim=-1)
    p = NF.normalize(pool, dim=-1)
    dist = torch.cdist(u, p)
    dist[dist < 1e-12] = math.inf  # the token's own value
    avg_l2 = (u - u.mean(0)).norm(dim=-1).mean()
    return dist.min(dim=1).values.mean() / avg_l2


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fewer_distinct_tokens_than_clusters_backends_agree(gen, seed, dtype):
    # 3 distinct tokens in the batch, 2 per image; 3 local and 5 global clusters
    x, pool = few_distinct(gen, B=4, N=20, d=16, values=3, per_image=2)
    x = x.to(dtype)
    kw = dict(local_clusters=3, global_clusters=5, group_size=None, seed=seed)
    ext = dse_ext.dse(x, backend="ext", **kw)
    ref = dse_ext.dse(x, backend="reference", **kw)
    assert_outputs_close(ext, ref, rtol=1e-5, atol=1e-6)
    # every distinct token is one cluster: no css, and M_inter is the distance between values
    assert float(ext.m_intra_batch) == pytest.approx(0, abs=1e-6)
    assert float(ext.m_intra_image) == pytest.approx(0, abs=1e-6)
    expected = nearest_other_value_distance(x.double(), pool.to(dtype).double())
    assert float(ext.m_inter) == pytest.approx(float(expected), rel=1e-5)
    assert float(ext.m_inter) > 0.5


@pytest.mark.parametrize("seed", [0, 5])
def test_a_group_with_fewer_distinct_tokens_than_global_clusters(gen, seed):
    # group 0 (images 0, 1): 2 distinct tokens; group 1 (images 2, 3): ordinary tokens
    few, pool = few_distinct(gen, B=2, N=12, d=8, values=2, per_image=2)
    x = torch.cat([few, torch.randn(2, 12, 8, generator=gen, dtype=few.dtype)])
    kw = dict(local_clusters=3, global_clusters=4, group_size=2, seed=seed)
    ext = dse_ext.dse(x, backend="ext", **kw)
    ref = dse_ext.dse(x, backend="reference", **kw)
    assert_outputs_close(ext, ref, rtol=1e-5, atol=1e-9)
    # group 0 alone: its 2 tokens are 2 clusters, each the other's nearest other centroid
    alone = dse_ext.dse(few, **dict(kw, group_size=None))
    assert float(alone.m_inter) == pytest.approx(float(nearest_other_value_distance(few, pool)), rel=1e-9)


def test_empty_clusters_are_not_other_centroids(gen):
    # Labels that leave cluster 2 empty with a stale centroid next to the tokens of cluster 0:
    # M_inter must not see it (the compiled op takes a valid mask; dse passes the non-empty clusters).
    x = torch.randn(2, 10, 6, generator=gen, dtype=torch.float64)
    labels = (torch.arange(10) >= 5).long().repeat(2, 1)
    out = dse_ext.dse(x, local_clusters=2, global_clusters=3, group_size=None, local_labels=labels,
                      global_labels=labels)
    same = dse_ext.dse(x, local_clusters=2, global_clusters=2, group_size=None, local_labels=labels,
                       global_labels=labels)
    assert_outputs_close(out, same, rtol=1e-12)


def test_merge_identical_centroids():
    c = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1e-17], [2.0, 2.0]]], dtype=torch.float64)
    labels = torch.tensor([[0, 1, 2, 3, 4, -1, 2]])
    merged = dse_ext.metric._merge_identical_centroids(c, labels)
    assert merged.tolist() == [[0, 1, 0, 1, 4, -1, 0]]  # 3 is 1 up to rounding
    c[0, 3, 1] = 1e-6  # a real difference: kept apart
    assert dse_ext.metric._merge_identical_centroids(c, labels).tolist() == [[0, 1, 0, 3, 4, -1, 0]]


@pytest.mark.parametrize("mod", [F, R])
def test_kmeans_degenerate_rules(mod):
    # 2 distinct points, 3 clusters: a duplicate centroid; ties go to the lowest index, so the
    # duplicate's cluster is empty and every point is labelled with the first of equal centroids.
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 2.0, 0.0])
    x = torch.stack([a, b, a, a, b, a, b, b, a, a]).double()
    for seed in range(6):
        c, labels = mod.kmeans(x, 3, seed=seed)
        used = set(labels.tolist())
        assert len(used) == 2
        for j in used:
            assert torch.equal(c[j], x[labels == j][0])  # each non-empty cluster sits on its value
            earlier = [i for i in range(j) if torch.equal(c[i], c[j])]
            assert not earlier  # no equal centroid before the one holding the points


# ------------------------------------------------------------------ 5. the checked boundary
def test_functional_wrappers_check_finiteness(gen):
    x = torch.randn(2, 10, 4, generator=gen)
    x[0, 3, 1] = float("nan")
    labels = torch.randint(0, 3, (2, 10), generator=gen)
    c = torch.randn(2, 3, 4, generator=gen)
    for mod in (F, R):
        with pytest.raises(ValueError, match="x contains 1 NaN/Inf"):
            mod.kmeans(x, 3)
        with pytest.raises(ValueError, match="x contains 1 NaN/Inf"):
            mod.cluster_css(x, labels, 3)
        with pytest.raises(ValueError, match="x contains 1 NaN/Inf"):
            mod.effective_rank(x)
        bad_c = c.clone()
        bad_c[1, 2, 0] = float("inf")
        with pytest.raises(ValueError, match="centroids contains 1 NaN/Inf"):
            mod.nearest_other_centroid_distance(x.nan_to_num(), bad_c, labels)
    # the raw ops do not read the data for NaN/Inf; the docs say where the checks are
    assert "finiteness" in dse_ext._ops.__doc__ and "NaN/Inf" in F.__doc__


# ------------------------------------------------------------------ 6. seeds
BAD_SEEDS = [(1.5, TypeError), ("1", TypeError), (True, TypeError), (None, TypeError), (2**63, ValueError),
             (-1, ValueError)]


@pytest.mark.parametrize("seed,error", BAD_SEEDS)
def test_bad_seeds_are_refused_everywhere(gen, seed, error):
    x = torch.randn(3, 10, 4, generator=gen)
    with pytest.raises(error, match=r"seed .*\[0, 2\*\*63\)"):
        dse_ext.dse(x, global_clusters=3, seed=seed)
    for mod in (F, R):
        with pytest.raises(error, match=r"seed .*\[0, 2\*\*63\)"):
            mod.kmeans(x, 3, seed=seed)
    if seed is not None:
        with pytest.raises(error, match=r"seed .*\[0, 2\*\*63\)"):
            dse_ext.DSERegularizer(seed=seed)


def test_largest_seed_is_accepted(gen):
    x = torch.randn(3, 10, 4, generator=gen)
    top = 2**63 - 1
    out = dse_ext.dse(x, global_clusters=3, seed=top)
    assert math.isfinite(float(out.dse))
    torch.testing.assert_close(F.kmeans(x, 3, seed=top)[0], R.kmeans(x, 3, seed=top)[0])
    assert dse_ext.DSERegularizer(seed=top).seed == top


# ------------------------------------------------------------------ 7. DSA outlier settings
def make_dsa(dim, cls=dse_ext.DSARegularizer, **kw):
    with torch.random.fork_rng():  # deterministic MLP initialisation, global RNG restored after
        torch.manual_seed(0)
        return cls(dim, **kw)


def test_dsa_refuses_settings_that_make_every_sample_an_outlier(gen):
    with pytest.raises(ValueError, match="mu = 5 > eta = 4.*mu <= eta"):
        dse_ext.DSARegularizer(4, eta=4, mu=5)
    dsa = make_dsa(4, eta=10, mu=4)
    dsa(torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen))  # B - 1 = 4 = mu: fine
    with pytest.raises(ValueError, match="B = 4 samples is too small for mu = 4.*at least mu \\+ 1 = 5"):
        dsa(torch.randn(4, 4, generator=gen), torch.randn(4, 4, generator=gen))


def test_dsa_some_sample_is_reliable_whenever_mu_is_at_most_eta(gen):
    # The sample whose eta-th neighbour is nearest is reliable; ties (duplicates) included here.
    for trial in range(200):
        B = int(torch.randint(4, 12, (1,), generator=gen))
        eta = int(torch.randint(2, B - 1, (1,), generator=gen))
        dsa = make_dsa(2, eta=eta, mu=eta)
        prior = torch.randint(0, 3, (B, 2), generator=gen).double() if trial % 2 else torch.randn(B, 2, generator=gen)
        assert bool((dsa.reliability(prior) > 0).any()), (trial, prior)


class AllOutliers(dse_ext.DSARegularizer):
    """Data for which every sample is an outlier (not reachable with mu <= eta and untied distances)."""

    def reliability(self, prior):
        return torch.zeros(prior.shape[0], dtype=prior.dtype, device=prior.device)


def test_dsa_warns_once_when_every_sample_is_an_outlier(gen):
    dsa = make_dsa(4, cls=AllOutliers, eta=2, mu=1)
    z1 = torch.randn(10, 4, generator=gen, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="every one of the 10 samples of this batch is an outlier"):
        dsa(z1, torch.randn(10, 4, generator=gen)).backward()
    # the adjustment term is then constant: no gradient reaches the embeddings
    assert torch.all(z1.grad == 0)
    assert float(dsa.last["outliers"]) == 10 and float(dsa.last["adjust"]) == pytest.approx(math.log(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dsa(torch.randn(10, 4, generator=gen), torch.randn(10, 4, generator=gen))  # once per module
    normal = make_dsa(4, eta=3, mu=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normal(torch.randn(10, 4, generator=gen), torch.randn(10, 4, generator=gen))
