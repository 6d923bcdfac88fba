"""Label-free representation-quality baselines to compare DSE against.

Each function takes tensors, computes in float64 on the input's device and returns a Python
``float``. Inputs are checked at the boundary (tensor type, shape, sample counts, NaN/Inf,
emptiness) and rejected with an actionable ``ValueError`` (``TypeError`` for a non-tensor or
non-floating input). None of them is differentiable: they are evaluation metrics.

========================  =========================  =================================================
function                  input                      reference
========================  =========================  =================================================
:func:`rankme`            image-level ``(n, d)``     Garrido et al. 2023 (RankMe)
:func:`dense_rankme`      patch tokens ``(B, N, d)`` our dense variant of RankMe
:func:`alpha_req`         image-level ``(n, d)``     Agrawal et al. 2022 (α-ReQ)
:func:`lidar`             views ``(n, q, d)``        Thilak et al. 2023/2024 (LiDAR)
========================  =========================  =================================================

Higher RankMe / dense RankMe / LiDAR means a higher effective rank. For α-ReQ, the paper
associates good downstream performance with a decay coefficient α near 1; it is not monotone.
"""

from __future__ import annotations

import math
import numbers

import torch

from ._validation import as_float_tensor

__all__ = ["rankme", "dense_rankme", "alpha_req", "lidar"]

#: Relative cut of α-ReQ's default fit range: eigenvalues ``λ_i <= ALPHA_REQ_CUT · λ_1`` are
#: treated as numerically zero and left out of the power-law fit.
ALPHA_REQ_CUT = 1e-12


# ------------------------------------------------------------------ boundary checks
def _as_float64(x, name: str, shape: str, ndim: int, hint: str = "") -> torch.Tensor:
    """Check type, number of dimensions, emptiness and finiteness; return a float64 copy/view."""
    if isinstance(x, torch.Tensor) and x.dim() != ndim:
        raise ValueError(f"{name} must have shape {shape}, got {x.dim()}-D shape {tuple(x.shape)}{hint}")
    x = as_float_tensor(x, name, check_finite=False).detach().to(torch.float64)  # type, dtype, emptiness
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s); remove or fix those samples first")
    return x


def _check_nonneg(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def _spectral_entropy_exp(values: torch.Tensor, eps: float) -> float:
    """``exp(−Σ p_k log p_k)`` with ``p_k = v_k / Σ v + eps`` (``0 · log 0 = 0``); ``values >= 0``, sum > 0."""
    p = values / values.sum() + eps
    return float(torch.exp(-torch.special.xlogy(p, p).sum()))


# ------------------------------------------------------------------ RankMe
def _rankme_matrix(z: torch.Tensor, eps: float, name: str) -> float:
    sv = torch.linalg.svdvals(z)
    total = sv.sum()
    if not bool(total > 0):
        raise ValueError(f"{name} is all zeros: RankMe is undefined for a zero spectrum")
    return _spectral_entropy_exp(sv, eps)


def rankme(embeddings, eps: float = 1e-7) -> float:
    """RankMe: the smooth effective rank of image-level embeddings.

    Garrido, Balestriero, Najman and LeCun, 2023, "RankMe: Assessing the downstream performance
    of pretrained self-supervised representations by their rank" (ICML 2023).

    Conventions (as in the paper):

    * the embeddings are **not** centred;
    * ``σ_1 ≥ … ≥ σ_m`` are the singular values of the ``(n, d)`` matrix, ``m = min(n, d)``;
    * ``p_k = σ_k / ‖σ‖₁ + eps`` (``eps`` is added *after* normalising, so ``Σ p_k = 1 + m·eps``);
    * ``RankMe = exp(−Σ_k p_k log p_k)``, natural logarithm, ``0 · log 0 := 0`` (for ``eps = 0``).

    The value lies in about ``[1, min(n, d)]`` (up to the ``eps`` perturbation), equals
    ``min(n, d)`` for orthogonal rows/columns of equal norm and 1 for a rank-1 matrix. It is
    invariant to scaling, to orthogonal maps of feature space and to permuting the samples.

    Args:
        embeddings: ``(n, d)`` image-level embeddings (one row per image), floating point.
        eps: the ``ε`` added to each ``p_k``, ``>= 0``; the paper's value is ``1e-7``.

    Returns:
        RankMe as a Python float.

    Raises:
        ValueError: not 2-D, empty, NaN/Inf values, all zeros, or a negative ``eps``.
    """
    eps = _check_nonneg(eps, "eps")
    z = _as_float64(embeddings, "embeddings", "(n, d) (image-level embeddings)", 2,
                    "; for patch tokens (B, N, d) use dense_rankme")
    return _rankme_matrix(z, eps, "embeddings")


def dense_rankme(tokens, eps: float = 1e-7) -> float:
    """Dense RankMe: RankMe of all patch tokens of a batch pooled into one matrix.

    This is **our dense variant** of RankMe (Garrido et al. 2023, "RankMe: Assessing the
    downstream performance of pretrained self-supervised representations by their rank"), not
    a metric from that paper: the ``B·N`` patch tokens of shape ``(B, N, d)`` are flattened into
    one ``(B·N, d)`` matrix and :func:`rankme` is applied to it with the same conventions (no
    centring, ``p_k = σ_k / ‖σ‖₁ + eps``, ``exp`` of the Shannon entropy). The value lies in about
    ``[1, min(B·N, d)]``.

    Args:
        tokens: ``(B, N, d)`` patch tokens (``B`` images, ``N`` tokens each), floating point.
        eps: the ``ε`` added to each ``p_k``, ``>= 0``.

    Returns:
        Dense RankMe as a Python float.

    Raises:
        ValueError: not 3-D, empty, NaN/Inf values, all zeros, or a negative ``eps``.
    """
    eps = _check_nonneg(eps, "eps")
    x = _as_float64(tokens, "tokens", "(B, N, d) (patch tokens)", 3,
                    "; for image-level embeddings (n, d) use rankme")
    return _rankme_matrix(x.reshape(-1, x.shape[-1]), eps, "tokens")


# ------------------------------------------------------------------ α-ReQ
def _covariance_eigenvalues(z: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (descending) of the ``1/(n−1)`` covariance of the centred rows of ``z``, ``min(n−1, d)`` of them."""
    n, d = z.shape
    centred = z - z.mean(0, keepdim=True)
    sv = torch.linalg.svdvals(centred)  # descending; σ² / (n−1) are the covariance eigenvalues
    return (sv[: min(n - 1, d)] ** 2) / (n - 1)


def _fit_indices(lam: torch.Tensor, fit_range) -> tuple[int, int]:
    """1-based inclusive ``(first, last)`` ranks of the fit."""
    m = lam.numel()
    if fit_range is None:
        last = int((lam > ALPHA_REQ_CUT * lam[0]).sum()) if bool(lam[0] > 0) else 0
        if last < 2:
            raise ValueError(
                f"alpha_req needs at least 2 covariance eigenvalues above {ALPHA_REQ_CUT:g}·λ_1 to fit a "
                f"power law, found {last}; the embeddings are (numerically) of rank < 2 after centring"
            )
        return 1, last
    try:
        first, last = (int(v) for v in fit_range)
    except (TypeError, ValueError):
        raise TypeError(f"fit_range must be a pair of ints (first, last), got {fit_range!r}") from None
    if not 1 <= first < last <= m:
        raise ValueError(
            f"fit_range must satisfy 1 <= first < last <= min(n − 1, d) = {m} (1-based, inclusive), got {fit_range!r}"
        )
    if not bool((lam[first - 1: last] > ALPHA_REQ_CUT * lam[0]).all()):
        raise ValueError(
            f"fit_range {fit_range!r} includes numerically zero covariance eigenvalues "
            f"(<= {ALPHA_REQ_CUT:g}·λ_1), whose logarithms are noise; use a smaller last rank or fit_range=None"
        )
    return first, last


def _check_fit_range(fit_range, m: int) -> None:
    """``fit_range`` is ``None`` or a pair of ints ``(first, last)`` with ``1 <= first < last <= m``."""
    if fit_range is None:
        return
    if not isinstance(fit_range, (tuple, list)) or len(fit_range) != 2:
        raise TypeError(
            f"fit_range must be None or a pair of ints (first, last) of 1-based inclusive eigenvalue ranks, "
            f"e.g. fit_range=(1, 10); got {fit_range!r} ({type(fit_range).__name__})"
        )
    for name, value in zip(("first", "last"), fit_range):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(
                f"fit_range must be a pair of ints (first, last); its {name} rank is {value!r} "
                f"({type(value).__name__}), e.g. pass fit_range=(1, 10)"
            )
    first, last = (int(v) for v in fit_range)
    if not 1 <= first < last <= m:
        raise ValueError(
            f"fit_range must satisfy 1 <= first < last <= min(n − 1, d) = {m} (1-based, inclusive), got {fit_range!r}"
        )


def alpha_req(embeddings, *, fit_range: tuple[int, int] | None = None) -> float:
    """α-ReQ: the power-law decay coefficient of the embeddings' covariance eigenspectrum.

    Agrawal, Mondal, Ghosh and Richards, 2022, "α-ReQ: Assessing representation quality in
    self-supervised learning by measuring eigenspectrum decay" (NeurIPS 2022).

    Conventions:

    * the embeddings are **centred** (the column mean is subtracted) and the covariance is
      ``Zcᵀ Zc / (n − 1)``; its eigenvalues ``λ_1 ≥ λ_2 ≥ …`` are computed as the squared singular
      values of the centred matrix over ``n − 1``; there are ``m = min(n − 1, d)`` of them
      (centring removes one degree of freedom);
    * the model is ``λ_i ∝ i^{−α}``: ``log λ_i = c − α log i`` is fitted by ordinary least squares
      (natural logarithms, unweighted) over the ranks ``i`` of ``fit_range``;
    * default ``fit_range=None``: all ranks ``i = 1..m`` with ``λ_i > 1e-12 · λ_1``
      (:data:`ALPHA_REQ_CUT`); smaller eigenvalues are numerical zeros of a rank-deficient
      covariance and would dominate the log-log fit;
    * the returned value is ``α`` itself, positive for a decaying spectrum, 0 for an isotropic one.

    The value is invariant to scaling, translation, orthogonal maps of feature space and
    permuting the samples.

    Args:
        embeddings: ``(n, d)`` image-level embeddings, ``n >= 3`` and ``d >= 2`` (at least two
            eigenvalues are needed for a fit).
        fit_range: optional ``(first, last)`` 1-based **inclusive** ranks to fit: a tuple or list
            of two ints (``bool``, ``float`` and ``str`` are refused with a ``TypeError``), with
            ``1 <= first < last <= min(n − 1, d)``; every eigenvalue in it must exceed the same
            ``1e-12 · λ_1`` cut (a ``ValueError`` otherwise, rather than fitting round-off).

    Returns:
        α as a Python float.

    Raises:
        ValueError: not 2-D, empty, too few samples or features, NaN/Inf values, fewer than two
            non-negligible eigenvalues, or ``fit_range`` ranks out of bounds.
        TypeError: ``fit_range`` is not ``None`` or a pair of ints.
    """
    z = _as_float64(embeddings, "embeddings", "(n, d) (image-level embeddings)", 2)
    n, d = z.shape
    if n < 3 or d < 2:
        raise ValueError(
            f"alpha_req needs at least 3 samples and 2 features (at least two covariance eigenvalues "
            f"to fit), got embeddings of shape {tuple(z.shape)}"
        )
    _check_fit_range(fit_range, min(n - 1, d))
    lam = _covariance_eigenvalues(z)
    first, last = _fit_indices(lam, fit_range)
    x = torch.arange(first, last + 1, dtype=torch.float64, device=z.device).log()
    y = lam[first - 1: last].log()
    xc = x - x.mean()
    slope = (xc * (y - y.mean())).sum() / (xc * xc).sum()
    return float(-slope)


# ------------------------------------------------------------------ LiDAR
def _lda_scatter(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Between-class ``1/(n−1)`` and within-class ``1/(n(q−1))`` scatter of views ``(n, q, d)``."""
    n, q, _ = z.shape
    mu_c = z.mean(1)  # (n, d) class means
    mu = mu_c.mean(0)  # grand mean = mean of class means
    between = mu_c - mu
    within = (z - mu_c[:, None, :]).reshape(n * q, -1)
    sigma_b = between.T @ between / (n - 1)
    sigma_w = within.T @ within / (n * (q - 1))
    return sigma_b, sigma_w


def _inv_sqrt_sym(a: torch.Tensor, delta: float) -> torch.Tensor:
    """Symmetric inverse square root ``V diag(w^{-1/2}) Vᵀ`` of a symmetric positive-definite matrix via eigh."""
    w, v = torch.linalg.eigh((a + a.T) / 2)
    if not bool(w.min() > 0):
        raise ValueError(
            f"the within-class covariance Σ_w + delta·I is not positive definite (smallest eigenvalue "
            f"{float(w.min()):.3g}, delta={delta:g}); use delta > 0 or more samples/views "
            f"(Σ_w has rank <= n·(q − 1))"
        )
    return (v * w.rsqrt()) @ v.T


def lidar(embeddings, *, delta: float = 1e-4, eps: float = 1e-8) -> float:
    """LiDAR: the smooth effective rank of the LDA matrix of augmented views.

    Thilak, Huang, Saremi, Dinh, Goh, Susskind, Littwin, 2023/2024, "LiDAR: Sensing linear
    probing performance in joint embedding SSL architectures" (ICLR 2024). Each of the ``n``
    source images is a surrogate class whose samples are its ``q`` augmented views.

    Conventions (the paper's formulas):

    * ``μ_c = (1/q) Σ_i z_ci`` (class mean), ``μ = (1/n) Σ_c μ_c`` (mean of class means; equal
      to the grand mean since every class has ``q`` views);
    * ``Σ_b = 1/(n − 1) · Σ_c (μ_c − μ)(μ_c − μ)ᵀ`` — the unbiased covariance of the class means;
    * ``Σ_w = 1/(n(q − 1)) · Σ_c Σ_i (z_ci − μ_c)(z_ci − μ_c)ᵀ + delta · I`` — the pooled unbiased
      within-class covariance, regularised by ``delta`` (paper: ``1e-4``);
    * ``Σ_lidar = Σ_w^{−1/2} Σ_b Σ_w^{−1/2}`` with the symmetric inverse square root from
      ``eigh``; ``λ`` are its eigenvalues, tiny negative round-off clamped to 0;
    * ``p_k = λ_k / Σ_j λ_j + eps`` (paper: ``eps = 1e-8``), ``LiDAR = exp(−Σ_k p_k log p_k)``,
      natural logarithm.

    The normalisation of ``Σ_b`` (``1/(n−1)``) only rescales ``Σ_lidar`` as a whole and cancels in
    ``p``; that of ``Σ_w`` (``1/(n(q−1))``) matters only through the size of ``delta`` relative to
    ``Σ_w``. We keep both as printed in the paper. The value lies in
    about ``[1, min(n − 1, d)]`` (``Σ_b`` has rank <= ``n − 1``). With ``delta → 0`` it is invariant
    to any invertible affine map of feature space (it depends on the eigenvalues of
    ``Σ_w^{−1} Σ_b`` only).

    Args:
        embeddings: ``(n, q, d)`` embeddings of ``q >= 2`` augmented views of each of ``n >= 2``
            source images.
        delta: ridge ``δ >= 0`` added to ``Σ_w``; with ``delta = 0``, ``Σ_w`` must be
            positive definite (needs ``n·(q − 1) >= d``).
        eps: the ``ε`` added to each ``p_k``, ``>= 0``.

    Returns:
        LiDAR as a Python float.

    Raises:
        ValueError: not 3-D, empty, ``n < 2`` or ``q < 2``, NaN/Inf values, a negative
            ``delta``/``eps``, a singular ``Σ_w + delta·I``, or identical class means (``Σ_b = 0``).
    """
    delta = _check_nonneg(delta, "delta")
    eps = _check_nonneg(eps, "eps")
    z = _as_float64(embeddings, "embeddings", "(n, q, d) (q augmented views of each of n source images)", 3)
    n, q, _ = z.shape
    if n < 2:
        raise ValueError(f"lidar needs n >= 2 source images (surrogate classes), got n={n} in shape {tuple(z.shape)}")
    if q < 2:
        raise ValueError(
            f"lidar needs q >= 2 augmented views per source image for the within-class covariance, "
            f"got q={q} in shape {tuple(z.shape)}"
        )
    sigma_b, sigma_w = _lda_scatter(z)
    sigma_w = sigma_w + delta * torch.eye(sigma_w.shape[0], dtype=z.dtype, device=z.device)
    w_isqrt = _inv_sqrt_sym(sigma_w, delta)
    sigma_lidar = w_isqrt @ sigma_b @ w_isqrt
    lam = torch.linalg.eigvalsh((sigma_lidar + sigma_lidar.T) / 2).clamp(min=0)
    if not bool(lam.sum() > 0):
        raise ValueError("all class means are identical (Σ_b = 0): LiDAR is undefined")
    return _spectral_entropy_exp(lam, eps)
