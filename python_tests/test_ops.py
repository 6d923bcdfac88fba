"""Every compiled op against its pure-PyTorch twin, on random and adversarial inputs."""

import math

import pytest
import torch

from dse_ext import functional as F
from dse_ext import reference as R

from helpers import clustered

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-6)}


def random_labels(gen, P, M, k, ignore=0.0):
    labels = torch.randint(0, k, (P, M), generator=gen)
    if ignore:
        labels[torch.rand(P, M, generator=gen) < ignore] = -1
    return labels


# ------------------------------------------------------------------ css
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("P,M,d,k", [(3, 40, 16, 3), (2, 300, 8, 2), (4, 50, 64, 5), (1, 7, 3, 7), (7, 90, 40, 4), (1, 300, 160, 2)])
def test_css_matches_reference(gen, dtype, P, M, d, k):
    x = torch.randn(P, M, d, generator=gen, dtype=dtype)
    labels = random_labels(gen, P, M, k, ignore=0.1)
    v, n = F.cluster_css(x, labels, k)
    rv, rn = R.cluster_css(x, labels, k)
    assert v.dtype == dtype and n.dtype == torch.long
    assert torch.equal(n, rn)
    torch.testing.assert_close(v, rv, **TOL[dtype])


def test_css_adversarial_clusters(gen):
    d = 12
    base = torch.randn(6, d, generator=gen, dtype=torch.float64)
    x = torch.cat([
        base[:1].repeat(5, 1),                     # cluster 0: identical points (css 0)
        base[1:3],                                  # cluster 1: exactly 2 points
        base[3:4],                                  # cluster 2: 1 point (skipped)
        base[4:6].repeat(10, 1),                    # cluster 3: rank 1 after centring, 20 points
        torch.randn(30, 2, generator=gen, dtype=torch.float64) @ torch.randn(2, d, generator=gen, dtype=torch.float64),
    ])                                              # cluster 4: rank-2 data
    labels = torch.tensor([0] * 5 + [1] * 2 + [2] + [3] * 20 + [4] * 30)
    v, n = F.cluster_css(x, labels, 6)   # cluster 5 is empty
    rv, rn = R.cluster_css(x, labels, 6)
    assert n.tolist() == [5, 2, 1, 20, 30, 0]
    assert v[0] < 1e-12 and v[2] == 0 and v[5] == 0  # identical points: rounding level only
    # two points: one singular value |x1 - x2| / sqrt(2)
    expected = torch.linalg.norm(base[1] - base[2]) / math.sqrt(2) / math.sqrt(d)
    torch.testing.assert_close(v[1], expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(v, rv, rtol=1e-9, atol=1e-12)


def test_css_tall_clusters_use_the_other_gram(gen):
    # n - 1 > d exercises the d x d Gram side.
    x = torch.randn(2, 500, 6, generator=gen, dtype=torch.float64)
    labels = random_labels(gen, 2, 500, 2)
    torch.testing.assert_close(F.cluster_css(x, labels, 2)[0], R.cluster_css(x, labels, 2)[0],
                               rtol=1e-10, atol=0)


def test_css_single_problem_and_scale(gen):
    x = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    labels = random_labels(gen, 1, 30, 3)[0]
    v, n = F.cluster_css(x, labels, 3)
    assert v.shape == (3,) and n.shape == (3,)
    v2, _ = F.cluster_css(4.0 * x + 7.0, labels, 3)  # translation-free, 1-homogeneous
    torch.testing.assert_close(v2, 4.0 * v, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ effective rank
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(5, 8, 32), (3, 40, 6), (2, 16, 16), (4, 1, 9), (9, 21, 25), (2, 140, 150)])
def test_effective_rank_matches_reference(gen, dtype, shape):
    x = torch.randn(*shape, generator=gen, dtype=dtype)
    torch.testing.assert_close(F.effective_rank(x), R.effective_rank(x), **TOL[dtype])


def test_effective_rank_known_values(gen):
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=gen, dtype=torch.float64))
    orth = q[:6]                                            # orthonormal rows -> 1
    assert abs(float(F.effective_rank(orth)) - 1.0) < 1e-12
    rank1 = torch.randn(8, 1, generator=gen, dtype=torch.float64) @ torch.randn(1, 10, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(F.effective_rank(rank1), torch.tensor(1 / 8, dtype=torch.float64), rtol=1e-9, atol=0)
    assert float(F.effective_rank(torch.zeros(3, 4, dtype=torch.float64))) == 0.0
    # two equal singular values among four -> exp(log 2) / 4
    m = torch.diag(torch.tensor([2.0, 2.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(F.effective_rank(m), torch.tensor(0.5, dtype=torch.float64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_effective_rank_index_reads_rows_in_place(gen, dtype):
    # The per-position M_dim layout: matrix n holds row perm[b, n] of image b.
    B, N, d = 6, 10, 7
    x = torch.randn(B, N, d, generator=gen, dtype=dtype)
    perm = torch.rand(B, N, generator=gen).argsort(dim=1)
    rows = (perm + N * torch.arange(B)[:, None]).t()  # (N, B)
    gathered = torch.gather(x, 1, perm[:, :, None].expand(B, N, d)).transpose(0, 1)
    out = F.effective_rank(x.reshape(B * N, d), index=rows)
    assert out.shape == (N,)
    torch.testing.assert_close(out, F.effective_rank(gathered), rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0)
    torch.testing.assert_close(out, R.effective_rank(x.reshape(B * N, d), index=rows), **TOL[dtype])
    # leading index dimensions, repeated rows
    idx = torch.randint(0, B * N, (2, 3, 4), generator=gen)
    torch.testing.assert_close(F.effective_rank(x.reshape(B * N, d), index=idx),
                               R.effective_rank(x.reshape(B * N, d), index=idx), **TOL[dtype])


def test_effective_rank_leading_dims(gen):
    x = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    out = F.effective_rank(x)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out[1, 2], F.effective_rank(x[1, 2]))


# ------------------------------------------------------------------ nearest other centroid
def nearest_inputs(gen, dtype, P, M, d, k, ignore):
    """Points (P, M, d), centroids (P, k, d) and labels with a share ``ignore`` of -1."""
    x = torch.randn(P, M, d, generator=gen, dtype=dtype)
    c = torch.randn(P, k, d, generator=gen, dtype=dtype)
    return x, c, random_labels(gen, P, M, k, ignore=ignore)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nearest_other_matches_reference(gen, dtype):
    P, M, d, k = 3, 60, 10, 5
    x, c, labels = nearest_inputs(gen, dtype, P, M, d, k, ignore=0.1)
    valid = torch.rand(P, k, generator=gen) > 0.3
    valid[0] = False
    valid[0, 1] = True  # problem 0: only centroid 1 exists
    for v in (None, valid):
        out = F.nearest_other_centroid_distance(x, c, labels, v)
        ref = R.nearest_other_centroid_distance(x, c, labels, v)
        torch.testing.assert_close(out, ref, **TOL[dtype])
    out = F.nearest_other_centroid_distance(x, c, labels, valid)
    assert torch.all(out[labels < 0] == 0)
    assert torch.all(out[0][labels[0] == 1] == 0)  # no other valid centroid


def test_nearest_other_is_second_nearest_after_kmeans(gen):
    x, _ = clustered(gen, 2, 90, 6, 3)
    c, labels = F.kmeans(x, 3)
    dist = torch.cdist(x, c)
    second = dist.sort(dim=2).values[..., 1]
    torch.testing.assert_close(F.nearest_other_centroid_distance(x, c, labels), second, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ non-contiguous and strided inputs
def test_strided_views_give_the_same_results(gen):
    big = torch.randn(4, 50, 24, generator=gen, dtype=torch.float64)
    x = big[::2, ::2, ::3]                      # non-contiguous view (2, 25, 8)
    xc = x.contiguous()
    labels = random_labels(gen, 2, 25, 3)
    assert not x.is_contiguous()
    torch.testing.assert_close(F.cluster_css(x, labels, 3)[0], F.cluster_css(xc, labels, 3)[0],
                               rtol=0, atol=0)
    torch.testing.assert_close(F.effective_rank(x), F.effective_rank(xc), rtol=0, atol=0)
    xt = big[0].t()                             # transposed (24, 50)
    torch.testing.assert_close(F.effective_rank(xt), R.effective_rank(xt.contiguous()), rtol=1e-10, atol=0)
    c1, l1 = F.kmeans(x, 3, seed=5)
    c2, l2 = F.kmeans(xc, 3, seed=5)
    assert torch.equal(l1, l2) and torch.equal(c1, c2)


# ------------------------------------------------------------------ backward outputs written once
def _poison_the_allocator(like: torch.Tensor, rounds: int = 4) -> None:
    """Frees blocks of NaNs the size of ``like``: a gradient buffer the kernels do not fill in
    full would most likely get one of them back (they are allocated empty, not zeroed)."""
    for _ in range(rounds):
        del_me = torch.full_like(like, math.nan)
        del del_me


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_css_backward_zeroes_rows_without_a_gradient(gen, dtype):
    """Ignored points, clusters of one point and clusters whose incoming gradient is 0 get exact
    zeros, the others the reference's gradient, whatever the freshly allocated buffer held."""
    P, M, d, k = 2, 40, 6, 4
    x = torch.randn(P, M, d, generator=gen, dtype=dtype)
    labels = random_labels(gen, P, M, k, ignore=0.2)
    labels[0, labels[0] == 3] = 2
    labels[0, 5] = 3  # cluster 3 of problem 0 has one point
    grad = torch.randn(P, k, generator=gen, dtype=torch.float64)
    grad[1, 0] = 0.0  # cluster 0 of problem 1: no incoming gradient
    xr = x.clone().requires_grad_(True)
    (R.cluster_css(xr, labels, k)[0] * grad.to(dtype)).sum().backward()
    for _ in range(3):
        _poison_the_allocator(x)
        got = torch.ops.dse.cluster_css_backward(grad, x, labels, k)
        assert torch.isfinite(got).all()
        assert (got[labels < 0] == 0).all() and (got[0, 5] == 0).all() and (got[1][labels[1] == 0] == 0).all()
        torch.testing.assert_close(got, xr.grad, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nearest_other_backward_zeroes_rows_without_a_gradient(gen, dtype):
    P, M, d, k = 2, 40, 6, 4
    x, c, labels = nearest_inputs(gen, dtype, P, M, d, k, ignore=0.2)
    labels[1, 3] = 0
    x[1, 3] = c[1, 1]  # on centroid 1, its nearest other one: the subgradient 0 (in the reference too)
    valid = torch.ones(P, k, dtype=torch.bool)
    valid[0] = False
    valid[0, 1] = True  # problem 0: one centroid, no other one for its own points
    grad = torch.randn(P, M, generator=gen, dtype=dtype)
    xr = x.clone().requires_grad_(True)
    (R.nearest_other_centroid_distance(xr, c, labels, valid) * grad).sum().backward()
    for _ in range(3):
        _poison_the_allocator(x)
        got, _ = torch.ops.dse.nearest_other_centroid_distance_backward(grad, x, c, labels, valid)
        assert torch.isfinite(got).all()
        assert (got[labels < 0] == 0).all() and (got[0][labels[0] == 1] == 0).all() and (got[1, 3] == 0).all()
        torch.testing.assert_close(got, xr.grad, **TOL[dtype])
