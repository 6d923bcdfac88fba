import pytest
import torch

from dse_ext import functional as F
from dse_ext import reference as R

from helpers import clustered


def same_partition(a, b):
    """Labels equal up to renaming of the clusters."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("init", ["k-means++", "k-means++-linear"])
def test_recovers_separated_clusters(gen, init):
    x, truth = clustered(gen, 4, 120, 16, 4)
    c, labels = F.kmeans(x, 4, init=init, seed=1)
    assert c.shape == (4, 4, 16) and labels.shape == (4, 120)
    for p in range(4):
        assert same_partition(labels[p], truth[p])


@pytest.mark.parametrize("init", ["k-means++", "k-means++-linear"])
def test_matches_reference_in_float64(gen, init):
    x = torch.randn(5, 80, 6, generator=gen, dtype=torch.float64)
    counts = torch.tensor([80, 50, 33, 80, 7])
    for seed in (0, 11):
        c, labels = F.kmeans(x, 7, seed=seed, counts=counts, init=init)
        rc, rlabels = R.kmeans(x, 7, seed=seed, counts=counts, init=init)
        assert torch.equal(labels, rlabels)
        torch.testing.assert_close(c, rc, rtol=1e-10, atol=1e-12)


def test_labels_are_nearest_returned_centroid(gen):
    x = torch.randn(3, 200, 5, generator=gen, dtype=torch.float64)
    c, labels = F.kmeans(x, 6, max_iters=3)
    torch.testing.assert_close(labels, torch.cdist(x, c).argmin(2), rtol=0, atol=0)


def test_padding_and_counts(gen):
    x = torch.randn(2, 50, 4, generator=gen, dtype=torch.float64)
    c, labels = F.kmeans(x, 3, counts=[50, 20])
    assert torch.all(labels[1, 20:] == -1) and torch.all(labels[1, :20] >= 0)
    # padding changes nothing: the same 20 points as an unpadded problem 1 (same RNG stream)
    c2, l2 = F.kmeans(torch.stack([x[0, :20], x[1, :20]]), 3)
    assert torch.equal(l2[1], labels[1, :20]) and torch.equal(c2[1], c[1])


def test_problems_are_independent_of_batch(gen):
    # Problem p's result depends only on its points, its index (RNG stream) and the seed.
    x = torch.randn(4, 60, 5, generator=gen, dtype=torch.float64)
    c_all, l_all = F.kmeans(x, 4, seed=3)
    y = x.clone()
    y[2] = torch.randn(60, 5, generator=gen, dtype=torch.float64)  # change another problem
    c_mod, l_mod = F.kmeans(y, 4, seed=3)
    for p in (0, 1, 3):
        assert torch.equal(l_all[p], l_mod[p]) and torch.equal(c_all[p], c_mod[p])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lone_problem_matches_batched(gen, dtype):
    # A lone problem runs with every thread inside it; in a batch, one thread per problem.
    x = torch.randn(4, 500, 12, generator=gen, dtype=dtype)
    c_all, l_all = F.kmeans(x, 6, seed=5)
    c_one, l_one = F.kmeans(x[:1], 6, seed=5)
    assert torch.equal(l_one[0], l_all[0]) and torch.equal(c_one[0], c_all[0])


def test_deterministic_and_seeded(gen):
    x = torch.randn(3, 100, 8, generator=gen)
    a = F.kmeans(x, 5, seed=42)
    b = F.kmeans(x, 5, seed=42)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = F.kmeans(x, 5, seed=43)
    assert not torch.equal(a[0], c[0])


def test_does_not_touch_global_rng(gen):
    x = torch.randn(2, 64, 4, generator=gen)
    state = torch.get_rng_state()
    F.kmeans(x, 3)
    R.kmeans(x, 3)
    assert torch.equal(state, torch.get_rng_state())


def test_duplicate_points_and_k_equals_n():
    x = torch.ones(1, 10, 3, dtype=torch.float64)       # all points identical
    c, labels = F.kmeans(x, 3)
    assert torch.all(torch.isfinite(c)) and labels.min() >= 0
    y = torch.eye(4, dtype=torch.float64)[None]          # k == n: every point its own cluster
    c, labels = F.kmeans(y, 4)
    assert sorted(labels[0].tolist()) == [0, 1, 2, 3]


def test_max_iters_zero_is_seeding_only(gen):
    x = torch.randn(2, 30, 3, generator=gen, dtype=torch.float64)
    c, _ = F.kmeans(x, 4, max_iters=0)
    rc, _ = R.kmeans(x, 4, max_iters=0)
    assert torch.equal(c, rc)
    # every seed is one of the data points
    for p in range(2):
        assert all(any(torch.equal(ci, xi) for xi in x[p]) for ci in c[p])


def test_tolerance_stops_early(gen):
    x, _ = clustered(gen, 2, 90, 4, 3, spread=0.01)
    _, _, iters = torch.ops.dse.kmeans(x, torch.tensor([90, 90]), 3, 50, 1e-4, 0, 0)
    assert torch.all(iters < 50) and torch.all(iters >= 1)
    _, _, iters0 = torch.ops.dse.kmeans(x, torch.tensor([90, 90]), 3, 5, 0.0, 0, 0)
    assert torch.all(iters0 <= 5)
