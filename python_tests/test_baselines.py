"""Label-free baselines (RankMe, dense RankMe, α-ReQ, LiDAR): closed-form cases, invariances, input errors."""

from __future__ import annotations

import math

import pytest
import torch

from dse_ext import baselines as B


def randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def orthogonal(gen, d):
    q, r = torch.linalg.qr(randn(gen, d, d))
    return q * torch.sign(torch.diagonal(r))


def exp_entropy(p):
    return math.exp(-sum(x * math.log(x) for x in p if x > 0))


def centred_design(gen, n, lam):
    """``(n, d)`` rows whose centred ``1/(n−1)`` covariance has exactly the eigenvalues ``lam``."""
    d = len(lam)
    a = randn(gen, n, d + 1)
    a[:, 0] = 1.0
    q, _ = torch.linalg.qr(a)
    basis = q[:, 1:]  # orthonormal columns, each orthogonal to the all-ones vector: exactly centred
    scale = torch.tensor(lam, dtype=torch.float64).mul(n - 1).sqrt()
    offset = randn(gen, 1, d) * 5  # a non-zero mean that the centring must remove
    return (basis * scale) @ orthogonal(gen, d).T + offset


# ------------------------------------------------------------------ RankMe
def test_rankme_orthogonal_rows_equal_norm():
    z = 2.5 * torch.eye(4, 6, dtype=torch.float64)
    assert B.rankme(z) == pytest.approx(4.0, abs=1e-5)
    assert B.rankme(z, eps=0.0) == pytest.approx(4.0, abs=1e-12)


def test_rankme_rank_one(gen):
    z = randn(gen, 20, 1) @ randn(gen, 1, 7)
    assert B.rankme(z) == pytest.approx(1.0, abs=1e-4)
    assert B.rankme(z) > 1.0  # eps spreads a little mass onto the zero singular values


def test_rankme_hand_computed():
    z = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    assert B.rankme(z, eps=0.0) == pytest.approx(exp_entropy([0.75, 0.25]), rel=1e-12)
    eps = 1e-7
    assert B.rankme(z, eps=eps) == pytest.approx(exp_entropy([0.75 + eps, 0.25 + eps]), rel=1e-12)
    assert B.rankme(z) == pytest.approx(exp_entropy([0.75, 0.25]), abs=1e-5)


def test_rankme_is_not_centred():
    # Two identical rows plus a common offset: rank 1 without centring (centring would give 0 / undefined).
    z = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [2.0, 4.0, 6.0]])
    assert B.rankme(z) == pytest.approx(1.0, abs=1e-4)


def test_rankme_invariances(gen):
    z = randn(gen, 30, 8) * torch.linspace(0.1, 3.0, 8, dtype=torch.float64)
    ref = B.rankme(z)
    assert 1.0 < ref < 8.0
    assert B.rankme(z @ orthogonal(gen, 8)) == pytest.approx(ref, rel=1e-10)
    assert B.rankme(z[torch.randperm(30, generator=gen)]) == pytest.approx(ref, rel=1e-12)
    assert B.rankme(17.0 * z) == pytest.approx(ref, rel=1e-12)
    assert B.rankme(z.float()) == pytest.approx(ref, rel=1e-5)  # float32 in, float64 inside


def test_dense_rankme_equals_rankme_of_flattened(gen):
    tokens = randn(gen, 3, 5, 12) * torch.linspace(0.2, 2.0, 12, dtype=torch.float64)
    value = B.dense_rankme(tokens)
    assert isinstance(value, float)
    assert value == pytest.approx(B.rankme(tokens.reshape(15, 12)), rel=1e-12)
    assert value != pytest.approx(B.rankme(tokens[0]), rel=1e-3)  # pools all images, not one


# ------------------------------------------------------------------ α-ReQ
def test_alpha_req_recovers_power_law(gen):
    lam = [i ** -1.5 for i in range(1, 21)]
    z = centred_design(gen, 60, lam)
    cov_eigs = torch.linalg.eigvalsh(torch.cov(z.T)).flip(0)
    assert torch.allclose(cov_eigs, torch.tensor(lam, dtype=torch.float64), rtol=1e-9, atol=0)
    assert B.alpha_req(z) == pytest.approx(1.5, abs=1e-6)
    assert B.alpha_req(z, fit_range=(3, 12)) == pytest.approx(1.5, abs=1e-6)
    assert B.alpha_req(3.0 * z[torch.randperm(60, generator=gen)]) == pytest.approx(1.5, abs=1e-6)


def test_alpha_req_fit_range_selects_part_of_spectrum(gen):
    # λ_i = i^-1 for i <= 8, then a much steeper tail: only the head fit returns 1.
    lam = [i ** -1.0 if i <= 8 else 8 ** -1.0 * (i / 8) ** -4.0 for i in range(1, 17)]
    z = centred_design(gen, 40, lam)
    assert B.alpha_req(z, fit_range=(1, 8)) == pytest.approx(1.0, abs=1e-6)
    assert B.alpha_req(z) > 1.5


def test_alpha_req_default_range_drops_numerical_zeros(gen):
    lam = [i ** -2.0 for i in range(1, 11)] + [0.0] * 6  # covariance of rank 10 in d = 16
    z = centred_design(gen, 50, lam)
    assert B.alpha_req(z) == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(ValueError, match="numerically zero covariance eigenvalues"):
        B.alpha_req(z, fit_range=(1, 16))


def test_alpha_req_isotropic_is_zero(gen):
    z = centred_design(gen, 40, [0.7] * 12)
    assert abs(B.alpha_req(z)) < 1e-8
    wide = randn(gen, 4000, 8)  # random isotropic samples: only sampling noise in the spectrum
    assert abs(B.alpha_req(wide)) < 0.1


def test_alpha_req_bad_fit_range(gen):
    z = randn(gen, 10, 5)
    with pytest.raises(ValueError, match=r"1 <= first < last <= min\(n − 1, d\) = 5"):
        B.alpha_req(z, fit_range=(1, 6))
    with pytest.raises(ValueError, match="first < last"):
        B.alpha_req(z, fit_range=(3, 3))
    with pytest.raises(TypeError, match="pair of ints"):
        B.alpha_req(z, fit_range=5)


def test_alpha_req_rank_one_raises(gen):
    z = randn(gen, 10, 1) @ randn(gen, 1, 4)
    with pytest.raises(ValueError, match="at least 2 covariance eigenvalues"):
        B.alpha_req(z)


# ------------------------------------------------------------------ LiDAR
def lidar_hand_case(t=0.5, means=(1.0, 2.0, 3.0)):
    """6 classes × 2 views in d = 3 with Σ_w = (2t²/3)·I and Σ_b = diag(2·m²)/5 exactly."""
    x, y, w = means
    mu = torch.tensor([[x, 0, 0], [-x, 0, 0], [0, y, 0], [0, -y, 0], [0, 0, w], [0, 0, -w]], dtype=torch.float64)
    mu = mu + torch.tensor([4.0, -1.0, 2.0], dtype=torch.float64)  # grand mean, removed by the scatter
    offsets = t * torch.eye(3, dtype=torch.float64).repeat(2, 1)  # class c moves along axis c mod 3
    views = torch.stack([mu + offsets, mu - offsets], dim=1)  # (6, 2, 3)
    s_w = 2 * t * t / 3
    s_b = [2 * m * m / 5 for m in means]
    return views, s_w, s_b


def test_lidar_scatter_matrices_hand_case():
    views, s_w, s_b = lidar_hand_case()
    sigma_b, sigma_w = B._lda_scatter(views)
    assert torch.allclose(sigma_w, s_w * torch.eye(3, dtype=torch.float64), atol=1e-14)
    assert torch.allclose(sigma_b, torch.diag(torch.tensor(s_b, dtype=torch.float64)), atol=1e-14)


@pytest.mark.parametrize("delta,eps", [(1e-4, 1e-8), (0.3, 1e-8), (0.0, 0.0)])
def test_lidar_closed_form(delta, eps):
    views, s_w, s_b = lidar_hand_case()
    lam = [b / (s_w + delta) for b in s_b]
    expected = exp_entropy([v / sum(lam) + eps for v in lam])
    assert B.lidar(views, delta=delta, eps=eps) == pytest.approx(expected, rel=1e-12)


def test_lidar_equal_between_class_spread_gives_full_rank():
    views, _, _ = lidar_hand_case(means=(2.0, 2.0, 2.0))
    assert B.lidar(views, eps=0.0) == pytest.approx(3.0, rel=1e-12)


def test_lidar_affine_invariance(gen):
    n, q, d = 50, 4, 8
    z = randn(gen, n, 1, d) * 2 + randn(gen, n, q, d) * torch.linspace(0.2, 1.5, d, dtype=torch.float64)
    a = randn(gen, d, d) + 4 * torch.eye(d, dtype=torch.float64)  # well conditioned
    assert torch.linalg.cond(a) < 10
    shift = randn(gen, d)
    ref = B.lidar(z, delta=1e-12)
    assert 1.0 < ref < d
    assert B.lidar(z @ a.T + shift, delta=1e-12) == pytest.approx(ref, rel=1e-8)
    # The ridge breaks the invariance once it is not negligible against Σ_w.
    assert B.lidar(1e-3 * z, delta=1e-4) != pytest.approx(ref, rel=1e-3)


def test_lidar_singular_within_class_needs_delta(gen):
    z = randn(gen, 3, 2, 10)  # n(q−1) = 3 < d = 10: Σ_w is singular
    with pytest.raises(ValueError, match="not positive definite.*use delta > 0"):
        B.lidar(z, delta=0.0)
    assert B.lidar(z) > 1.0


def test_lidar_identical_class_means_raise(gen):
    z = randn(gen, 1, 3, 4).repeat(5, 1, 1)
    with pytest.raises(ValueError, match="class means are identical"):
        B.lidar(z)


def test_lidar_too_few_views_or_images(gen):
    with pytest.raises(ValueError, match="q >= 2 augmented views"):
        B.lidar(randn(gen, 10, 1, 4))
    with pytest.raises(ValueError, match="n >= 2 source images"):
        B.lidar(randn(gen, 1, 5, 4))
    with pytest.raises(ValueError, match=r"\(n, q, d\).*got 2-D"):
        B.lidar(randn(gen, 10, 4))
    with pytest.raises(ValueError, match="delta must be a finite number >= 0"):
        B.lidar(randn(gen, 10, 2, 4), delta=-1.0)


# ------------------------------------------------------------------ input errors
@pytest.mark.parametrize("fn", [B.rankme, B.alpha_req])
def test_one_dimensional_input(fn):
    with pytest.raises(ValueError, match=r"must have shape \(n, d\).*got 1-D shape \(5,\)"):
        fn(torch.ones(5))


def test_rankme_wrong_ndim_points_to_dense_variant(gen):
    with pytest.raises(ValueError, match="use dense_rankme"):
        B.rankme(randn(gen, 2, 3, 4))
    with pytest.raises(ValueError, match=r"\(B, N, d\).*use rankme"):
        B.dense_rankme(randn(gen, 3, 4))


@pytest.mark.parametrize("fn,shape", [(B.rankme, (6, 3)), (B.dense_rankme, (2, 3, 3)),
                                      (B.alpha_req, (6, 3)), (B.lidar, (3, 2, 3))])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_input(gen, fn, shape, bad):
    x = randn(gen, *shape)
    x.view(-1)[4] = bad
    with pytest.raises(ValueError, match="contains 1 NaN/Inf value"):
        fn(x)


def test_too_few_rows(gen):
    with pytest.raises(ValueError, match="at least 3 samples and 2 features"):
        B.alpha_req(randn(gen, 2, 5))
    with pytest.raises(ValueError, match="is empty"):
        B.rankme(torch.empty(0, 4))
    with pytest.raises(ValueError, match="is empty"):
        B.dense_rankme(torch.empty(2, 0, 4))


def test_degenerate_and_type_errors(gen):
    with pytest.raises(ValueError, match="all zeros"):
        B.rankme(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        B.rankme(randn(gen, 3, 4), eps=-1e-7)
    with pytest.raises(TypeError, match="torch.Tensor"):
        B.rankme([[1.0, 2.0]])
    with pytest.raises(TypeError, match="floating tensor"):
        B.rankme(torch.ones(3, 4, dtype=torch.long))
