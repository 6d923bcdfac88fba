"""The k-means tie rules (csrc/common/kmeans_rules.h) in the compiled kernel and the reference.

On data whose distances and sums are exact in any arithmetic (small integers, dyadic values),
the CPU kernel and :mod:`dse_ext.reference` must agree bit for bit: the seeding's blocked
cumulative search (never a zero-weight point while another weighs more; the uniform rule when
all weigh 0), nearest centroid with ties to the lowest index, and the update ``sum * (1 / n)``.
The CUDA kernel follows the same rules; the device × dtype table (test_op_table.py) compares it
with the CPU on the tie samples of samples.py.
"""

import pytest
import torch

from dse_ext import functional as F
from dse_ext import reference as R
from dse_ext._rng import uniform01

DTYPES = (torch.float32, torch.float64)
INITS = ("k-means++", "k-means++-linear")


def _seed_pick_by_definition(weights, u, block=256):
    """The seeding rule written out in Python floats: cum_i = before_b + run_i."""
    w = [float(v) for v in weights]
    n = len(w)
    cum, before = [], 0.0
    for start in range(0, n, block):
        run = 0.0
        for v in w[start:start + block]:
            run += v
            cum.append(before + run)
        before += run
    total = before
    if not total > 0:
        return min(int(u * n), n - 1)
    for i, c in enumerate(cum):
        if c > u * total:
            return i
    return max(i for i, v in enumerate(w) if v > 0)


@pytest.mark.parametrize("n", [1, 7, 255, 256, 257, 700, 1500])
def test_reference_seed_pick_is_the_blocked_rule(n):
    g = torch.Generator().manual_seed(n)
    w = torch.rand(n, generator=g, dtype=torch.float64) ** 6 * 10.0 ** torch.randint(-3, 4, (n,), generator=g)
    w[torch.rand(n, generator=g) < 0.3] = 0.0  # zero weights: duplicates of chosen centroids
    if n > 300:
        w[250:262] = 0.0  # a zero run across a block boundary
    for c in range(200):
        u = uniform01(17, n, c)
        got = R._seed_pick(w, u)
        assert got == _seed_pick_by_definition(w, u)
        if bool((w > 0).any()):
            assert w[got] > 0, "a zero-weight point was drawn"
    zeros = torch.zeros(n, dtype=torch.float64)
    for c in range(20):
        u = uniform01(3, n, c)
        assert R._seed_pick(zeros, u) == min(int(u * n), n - 1)


def _same(got, want):
    (c, labels), (rc, rlabels) = got, want
    assert torch.equal(labels, rlabels)
    assert torch.equal(c, rc)  # bit for bit


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("init", INITS)
def test_equidistant_points_match_the_reference_bit_for_bit(dtype, init):
    # A 5 x 5 integer grid: many points lie exactly halfway between two seeds.
    grid = torch.stack(torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij"), -1).reshape(1, 25, 2)
    x = torch.cat([grid, grid.flip(1) * 2, grid + 7]).to(dtype)
    for seed in range(25):
        _same(F.kmeans(x, 4, max_iters=0, seed=seed, init=init), R.kmeans(x, 4, max_iters=0, seed=seed, init=init))
    # and every label is the lowest index among the nearest (exact) centroids
    c, labels = F.kmeans(x, 4, max_iters=0, seed=3, init=init)
    dist = torch.cdist(x.double(), c.double()) ** 2
    lowest = (dist == dist.min(2, keepdim=True).values).to(torch.uint8).argmax(2)
    assert torch.equal(labels, lowest)


@pytest.mark.parametrize("dtype", DTYPES)
def test_update_is_the_sum_times_the_reciprocal(dtype):
    # Three clumps of three integer points: a clump's coordinate sums (5, 304, 603, ...) times
    # 1/3 are not the quotients sum / 3, and both the kernel and the reference multiply.
    x = torch.tensor([[0, 0], [1, 0], [4, 0], [100, 0], [101, 3], [103, 0], [0, 200], [2, 201], [0, 203]],
                     dtype=dtype)[None]
    c, labels = F.kmeans(x, 3, seed=2)
    _same((c, labels), R.kmeans(x, 3, seed=2))
    xd = x[0].double()
    for j in range(3):
        members = xd[labels[0] == j]
        assert len(members) == 3
        assert torch.equal(c[0, j], (members.sum(0) * (1.0 / 3)).to(dtype))
    assert not torch.equal(c[0].double(), torch.stack([xd[labels[0] == j].sum(0) / 3 for j in range(3)]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("init", INITS)
def test_duplicates_are_never_drawn_while_others_weigh_more(dtype, init):
    # 60 copies of one point near 1000 and 7 points that differ from it in one coordinate by
    # >= 1/4. In float32 the GEMM distance of a copy to itself is rounding noise of about 2,
    # far above the others' weights: the kernel must still give the copies weight 0, so the
    # 8 seeds are the 8 distinct points, exactly as the reference draws them.
    g = torch.Generator().manual_seed(0)
    base = (torch.randn(16, generator=g, dtype=torch.float64) + 1000).float().double()
    others = base + torch.eye(16, dtype=torch.float64)[:7] * 0.25 * torch.arange(1, 8)[:, None]
    rows = torch.cat([base.expand(60, 16), others])[torch.randperm(67, generator=g)]
    x = rows[None].to(dtype)
    distinct = torch.cat([base[None], others]).to(dtype)
    for seed in range(20):
        c, _ = F.kmeans(x, 8, max_iters=0, seed=seed, init=init)
        rc, _ = R.kmeans(x, 8, max_iters=0, seed=seed, init=init)
        assert torch.equal(c, rc)  # the same seeds, drawn by the same rule from the same weights
        matches = (c[0][:, None, :] == distinct[None]).all(-1)  # (8 seeds, 8 distinct points)
        assert torch.equal(matches.sum(0), torch.ones(8, dtype=torch.long)), f"seed {seed}: a duplicate seed"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("init", INITS)
def test_fewer_distinct_points_than_k_match_the_reference(dtype, init):
    # Two distinct dyadic points, 8 copies each (so a cluster's mean is exactly its point):
    # after both are drawn every weight is 0 and the uniform rule picks duplicates; coincident
    # centroids then tie at every point and the lowest-numbered one takes the points.
    x = torch.tensor([[0.75, -1.5, 2.0], [3.25, 0.5, -0.25]], dtype=dtype).repeat(8, 1)[None]
    x = x[:, torch.randperm(16, generator=torch.Generator().manual_seed(1))]
    for seed in range(20):
        for max_iters in (0, 5):
            got = F.kmeans(x, 4, max_iters=max_iters, seed=seed, init=init)
            _same(got, R.kmeans(x, 4, max_iters=max_iters, seed=seed, init=init))
            c, labels = got
            for i in range(16):
                equal = (c[0] == x[0, i]).all(1)
                assert equal.any() and labels[0, i] == int(equal.to(torch.uint8).argmax())


def test_many_points_cross_seed_blocks_and_update_segments():
    # M = 1100 > 512 (update segments) > 256 (seeding blocks): integer data, so the CPU's
    # segmented sums and the reference's sums are exact and equal.
    g = torch.Generator().manual_seed(4)
    centres = torch.tensor([[0, 0], [40, 0], [0, 40], [40, 40]], dtype=torch.float64)
    x = (centres[torch.arange(1100) % 4] + torch.randint(-3, 4, (1100, 2), generator=g))[None]
    for seed in range(5):
        _same(F.kmeans(x, 4, seed=seed), R.kmeans(x, 4, seed=seed))
