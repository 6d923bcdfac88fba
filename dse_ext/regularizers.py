"""Training-time regularizers: DSE (Dai et al.) on dense tokens and DSA (Song et al.) on embeddings."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ._rng import derive_seed
from ._validation import as_float_tensor, check_positive_int, check_seed
from .metric import M_DIM_MODES, DSEOutput, dse


class DSERegularizer(nn.Module):
    """``loss = −weight · DSE(tokens)``: add it to the SSL loss to counter dense degradation.

    DSE is the official form ``m_inter − m_intra + m_dim`` (README, "The metric") with, by default, the
    pooled M_dim and the global clustering over consecutive groups of 8 images, as in the paper's
    released regularizer (which groups ``global_clusters // local_clusters`` = 24 // 3 images) and
    lightly's port of it. k-means runs without
    gradient and its centroids are constants; gradients flow through the token normalization,
    avg_l2, the css, the effective rank and the distances. The paper uses ``weight = 1e-3``.

    Args:
        weight: β, the multiplier of DSE (the loss is ``−weight · DSE``).
        normalize, local_clusters, global_clusters, m_dim: as in :func:`dse_ext.dse`.
        group_size: images per group of the global clustering (the last group may be smaller);
            ``None``: the whole batch as one group (24 clusters over all B·N tokens: more work
            and coarser clusters than the released regularizer's groups of 8).
        seed: ``None`` draws a new k-means seed every call from a step counter (reproducible
            from run to run, different at every step); an ``int`` in ``[0, 2**63)`` uses that
            seed at every call.
            torch's global RNG is never used.
        backend: as in :func:`dse_ext.dse` (``"auto"``, ``"ext"`` or ``"reference"``).

    ``forward(tokens)`` takes ``(B, N, d)`` patch tokens (any float dtype: bf16/fp16 are computed
    in float32) and returns a float32 (float64 for float64 tokens) scalar. After each call
    ``last`` holds the detached :class:`dse_ext.DSEOutput` for logging, at no extra cost.
    Under DDP each rank regularizes its own batch (no gathering across ranks).

    All-zero tokens (dead ReLU outputs, masked or padded positions) are allowed: with
    ``normalize=True`` they get a zero gradient (see :func:`dse_ext.dse`). Second-order gradients
    through the loss are not supported (they raise); ``create_graph=True`` for a first-order
    gradient works.
    """

    def __init__(self, weight: float = 1e-3, normalize: bool = True, local_clusters: int = 3,
                 global_clusters: int = 24, group_size: int | None = 8, m_dim: str = "pooled",
                 seed: int | None = None, backend: str = "auto"):
        super().__init__()
        if not math.isfinite(weight):
            raise ValueError(f"weight must be finite, got {weight}")
        if m_dim not in M_DIM_MODES:
            raise ValueError(f"m_dim must be one of {M_DIM_MODES}, got {m_dim!r}")
        check_positive_int(local_clusters, "local_clusters")
        check_positive_int(global_clusters, "global_clusters", minimum=2)
        if group_size is not None:
            check_positive_int(group_size, "group_size")
        if seed is not None:
            seed = check_seed(seed)
        self.weight, self.normalize, self.m_dim = float(weight), normalize, m_dim
        self.local_clusters, self.global_clusters, self.group_size, self.seed = (
            local_clusters, global_clusters, group_size, seed)
        self.backend = backend
        self.steps = 0
        self.last: DSEOutput | None = None

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, local_clusters={self.local_clusters}, global_clusters="
                f"{self.global_clusters}, group_size={self.group_size}, m_dim={self.m_dim!r}, seed={self.seed}")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        seed = derive_seed(0, f"regularizer-step-{self.steps}") if self.seed is None else self.seed
        self.steps += 1
        out = dse(tokens, normalize=self.normalize, local_clusters=self.local_clusters,
                  global_clusters=self.global_clusters, group_size=self.group_size, m_dim=self.m_dim, seed=seed,
                  backend=self.backend)
        self.last = DSEOutput(*(t.detach() for t in out))
        return -self.weight * out.dse


class DSARegularizer(nn.Module):
    """Dynamic Semantic Adjuster (Song et al.): pull semantically close samples together, push the
    others apart, ignore outliers.

    For the embeddings ``z1, z2`` ``(B, D)`` of two augmented views (and optional prior features
    ``prior`` ``(B, D')`` of the un-augmented images; by default the detached mean of the two
    normalized views):

    - a learned pairwise MLP gives the regulation matrix ``M`` ``(B, B)`` in [0, 1] from the
      detached view-mean embeddings ``h`` (a linear projection ``a = W h``, then an MLP on
      ``[|a_i − a_j|, a_i ⊙ a_j]`` and a sigmoid; symmetric by construction);
    - reliability ``s_i ∈ [0, 1]``: with ``N_η(i)`` the η nearest neighbours of i in the prior
      space, ``r_i = |{j ∈ N_η(i) : i ∈ N_η(j)}|`` reciprocal neighbours and ``s_i = r_i / η``,
      or 0 (an outlier, no gradient) when ``r_i < μ``;
    - ``loss = λ1 · log(1 + mean_ij exp(s_i · d_ij · (2 M_ij − 1) / τ)) + λ2 · ‖M − P‖_F``, the
      mean over i, j and the four view pairs (1-1, 2-2, 1-2, 2-1), ``d_ij`` the Euclidean
      distance between the L2-normalized embeddings and ``P_ij = exp(−‖p_i − p_j‖ / τ_p)`` the
      prior similarity of the L2-normalized prior features.

    Pairs with ``M > ½`` are pulled together, pairs with ``M < ½`` pushed apart; with M close to
    P that means pairs closer than ``τ_p · ln 2`` in the prior space, so choose ``tau_prior`` for
    the scale of your prior features. M is a constant in the adjustment term: the MLP learns from
    the anchor term only. (Trained by the adjustment term too, M drifts to 0 everywhere, since
    every ``d_ij ≥ 0``, and the regularizer only repels; in our synthetic test that raised the
    crowding ratio instead of lowering it.) The MLP is a submodule: pass
    ``regularizer.parameters()`` to the optimizer with the model's. ``last`` holds the two terms,
    the number of outliers and the mean of M of the latest call.

    Differences from the authors' release (documented in the README): M is not row-normalized
    (there, ``2M − 1`` is negative almost everywhere so the term only repels); the cross-view
    terms use both views (there, both matrices come from one view); the prior defaults to the
    model's own detached embeddings instead of an ImageNet-supervised network.

    Args:
        dim: D, the embedding size.
        eta: η, neighbours for the reliability score (clipped to B − 1).
        mu: μ, reciprocal neighbours needed not to be an outlier; ``1 <= mu <= eta``, and a
            batch needs ``B >= mu + 1`` samples (else ``r_i <= B − 1 < μ`` for every sample: all
            outliers, no adjustment), which ``forward`` checks. When, in a valid setting, every
            sample of a batch is still an outlier because of the data, ``forward`` warns
            (``RuntimeWarning``, once per module): the adjustment term then has no gradient. That
            takes tied distances (duplicate samples), see :meth:`reliability`.
        lambda1, lambda2: weights of the adjustment term and of the prior anchor.
        tau, tau_prior: temperatures τ and τ_p.
        hidden: width of the pairwise MLP (and of the projection feeding it).
    """

    def __init__(self, dim: int, *, eta: int = 20, mu: int = 1, lambda1: float = 1.0, lambda2: float = 0.01,
                 tau: float = 0.5, tau_prior: float = 0.5, hidden: int = 64):
        super().__init__()
        check_positive_int(dim, "dim")
        check_positive_int(eta, "eta")
        check_positive_int(mu, "mu")
        check_positive_int(hidden, "hidden")
        if mu > eta:
            raise ValueError(
                f"mu = {mu} > eta = {eta}: a sample has at most eta reciprocal neighbours among its eta nearest, so "
                f"every sample would be an outlier and the adjustment term would do nothing; choose mu <= eta")
        for name, value in (("tau", tau), ("tau_prior", tau_prior)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name, value in (("lambda1", lambda1), ("lambda2", lambda2)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        self.dim, self.eta, self.mu = dim, eta, mu
        self.lambda1, self.lambda2, self.tau, self.tau_prior = lambda1, lambda2, tau, tau_prior
        self.project = nn.Linear(dim, hidden)
        self.pair_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.last: dict[str, torch.Tensor] = {}
        self._warned_all_outliers = False

    def regulation(self, h: torch.Tensor) -> torch.Tensor:
        """M ``(B, B)`` in [0, 1] from embeddings ``h`` ``(B, D)``."""
        a = self.project(h)
        pair = torch.cat([(a[:, None] - a[None]).abs(), a[:, None] * a[None]], dim=-1)  # (B, B, 2·hidden)
        return torch.sigmoid(self.pair_mlp(pair).squeeze(-1))

    def reliability(self, prior: torch.Tensor) -> torch.Tensor:
        """s ``(B,)`` in [0, 1] from reciprocal η-nearest neighbours in the prior space.

        With distinct distances some sample is always reliable when μ ≤ η: the one whose η-th
        neighbour is nearest is among the η nearest of each of its neighbours. Only tied
        distances (duplicate samples; ties go to the lowest index) can make every sample an outlier.
        """
        B = prior.shape[0]
        eta = min(self.eta, B - 1)
        dist = torch.cdist(prior, prior)
        dist.fill_diagonal_(math.inf)
        # the η nearest; equal distances (duplicate samples) go to the lowest index, on every device
        knn = dist.sort(dim=1, stable=True).indices[:, :eta]  # (B, η)
        is_nn = torch.zeros(B, B, dtype=torch.bool, device=prior.device)
        is_nn.scatter_(1, knn, True)
        reciprocal = (is_nn & is_nn.t()).sum(1).to(prior.dtype)
        return torch.where(reciprocal >= self.mu, reciprocal / eta, torch.zeros_like(reciprocal))

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        z1 = as_float_tensor(z1, "z1")
        z2 = as_float_tensor(z2, "z2")
        if z1.dim() != 2 or z1.shape != z2.shape or z1.shape[1] != self.dim:
            raise ValueError(f"z1 and z2 must both have shape (B, {self.dim}), got {tuple(z1.shape)} and "
                             f"{tuple(z2.shape)}")
        B = z1.shape[0]
        if B < 2:
            raise ValueError(f"DSA needs at least 2 samples, got B = {B}")
        if B - 1 < self.mu:
            raise ValueError(
                f"a batch of B = {B} samples is too small for mu = {self.mu}: eta is clipped to B - 1 = {B - 1} "
                f"neighbours, fewer than the mu reciprocal neighbours a sample needs, so every sample would be an "
                f"outlier; pass batches of at least mu + 1 = {self.mu + 1} samples or lower mu")
        u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        h = (0.5 * (u1 + u2)).detach()
        if prior is None:
            p = F.normalize(h, dim=1)
        else:
            p = as_float_tensor(prior, "prior")
            if p.dim() != 2 or p.shape[0] != B:
                raise ValueError(f"prior must have shape (B={B}, D'), got {tuple(p.shape)}")
            p = F.normalize(p.detach().to(z1.dtype), dim=1)
        s = self.reliability(p)
        if not getattr(self, "_warned_all_outliers", False) and not bool((s > 0).any()):
            self._warned_all_outliers = True
            warnings.warn(
                f"DSARegularizer: every one of the {B} samples of this batch is an outlier (fewer than mu = {self.mu} "
                f"reciprocal neighbours among its eta = {min(self.eta, B - 1)} nearest in the prior space, which takes "
                f"tied distances, e.g. duplicate samples): the adjustment term is a constant without gradient for this "
                f"batch; lower mu, or check the batch and the prior features for duplicates (warned once per module)",
                RuntimeWarning, stacklevel=2)
        m = self.regulation(h.to(self.project.weight.dtype)).to(z1.dtype)
        target = torch.exp(-torch.cdist(p, p) / self.tau_prior)
        sign = 2.0 * m.detach() - 1.0  # M is trained by the anchor term only (see the class docstring)
        views = (u1, u2)
        exps = [s[:, None] * torch.cdist(views[a], views[b]) * sign / self.tau for a, b in ((0, 0), (1, 1), (0, 1), (1, 0))]
        stacked = torch.stack(exps)  # (4, B, B)
        # log(1 + mean exp(e)) computed stably as softplus(logmeanexp(e))
        log_mean = torch.logsumexp(stacked.reshape(-1), dim=0) - math.log(stacked.numel())
        adjust = F.softplus(log_mean)
        anchor = torch.linalg.matrix_norm(m - target)
        loss = self.lambda1 * adjust + self.lambda2 * anchor
        self.last = {"adjust": adjust.detach(), "anchor": anchor.detach(), "outliers": (s == 0).sum().detach(),
                     "mean_regulation": m.detach().mean()}
        return loss
