"""The Dense representation Structure Estimator, assembled from the batched ops."""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch

from . import _ops, reference
from ._ops._common import first_order_only
from ._ops._library import empty_for_overwrite
from ._ops.kmeans import check_options as check_kmeans_options
from ._rng import derive_seed
from ._validation import as_float_tensor, check_labels, check_ndim, check_positive_int, check_seed

M_DIM_MODES = ("per_position", "pooled")
BACKENDS = ("auto", "ext", "reference")


class DSEOutput(NamedTuple):
    """DSE and its components; every field is a 0-dim tensor (float32, or float64 for float64 input).

    ``dse`` is the official form ``m_inter - m_intra + m_dim``. The paper form
    ``(m_inter - m_intra) + λ·m_dim`` needs λ from a set of checkpoints.
    """

    dse: torch.Tensor
    m_inter: torch.Tensor
    m_intra: torch.Tensor
    m_intra_image: torch.Tensor
    m_intra_batch: torch.Tensor
    m_dim: torch.Tensor
    avg_l2: torch.Tensor

    def to_dict(self) -> dict[str, float]:
        """The fields as Python floats."""
        return {name: float(value) for name, value in self._asdict().items()}


def _select_backend(backend: str, device: torch.device):
    """The op namespace dse() calls: the compiled ops without their argument checks (dse() checks
    its own input, and builds every other argument itself), or the reference."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return reference
    if _ops.has_kernel(device):
        _ops.warn_if_unvalidated(device)
        return _ops.UNCHECKED
    if backend == "ext":
        _ops.require_kernel(torch.empty(0, device=device))  # raises with the reason
    warnings.warn(
        f"dse_ext: no compiled kernels for {device.type} tensors; using the (slow) reference backend",
        RuntimeWarning,
        stacklevel=3,
    )
    return reference


def _group(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, d) → (P, G·N, d) groups of consecutive images, zero-padded, and valid-token counts (P,)."""
    B, N, d = x.shape
    P = -(-B // group_size)
    pad = P * group_size - B
    if pad:
        x = torch.cat([x, x.new_zeros(pad, N, d)])
    counts = torch.full((P,), group_size * N, dtype=torch.long)  # on the CPU: the kernels read it there
    counts[-1] = (B - (P - 1) * group_size) * N
    return x.reshape(P, group_size * N, d), counts


def _group_labels(labels: torch.Tensor, group_size: int) -> torch.Tensor:
    B, N = labels.shape
    P = -(-B // group_size)
    pad = P * group_size - B
    if pad:
        labels = torch.cat([labels, labels.new_full((pad, N), -1)])
    return labels.reshape(P, group_size * N)


def _segment_means(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-problem cluster means (P, k, d) and which clusters are non-empty (P, k)."""
    P, M, d = x.shape
    keep = labels >= 0
    idx = (labels.clamp(min=0) + k * torch.arange(P, device=x.device)[:, None])[keep]
    sums = torch.zeros(P * k, d, dtype=torch.float64, device=x.device).index_add_(0, idx, x[keep].double())
    counts = torch.zeros(P * k, dtype=torch.float64, device=x.device).index_add_(
        0, idx, torch.ones_like(idx, dtype=torch.float64))
    means = (sums / counts.clamp(min=1)[:, None]).to(x.dtype)
    return means.reshape(P, k, d), (counts > 0).reshape(P, k)


class _MeanDistanceToMean(torch.autograd.Function):
    """Mean over the B·N tokens of ‖x − x̄‖ (x̄ the mean token), in blocks of images.

    Blocks keep the temporary ``x − x̄`` small: one batch-sized temporary would be a fresh
    allocation on every call, and its page faults cost more than the arithmetic. The gradient,
    ``(u − ū) · grad / (B·N)`` with ``u = (x − x̄) / ‖x − x̄‖`` (0 for a token at the mean, as
    autograd's norm gives) and ū the mean of u, is written block by block into one buffer: half
    the passes over the tokens of autograd through the blocks. First order only.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, block_bytes: int) -> torch.Tensor:
        B, N, d = x.shape
        mean = x.mean(dim=(0, 1))
        step = max(1, block_bytes // max(1, N * d * x.element_size()))
        # One block-sized temporary for all blocks: fresh ones page-faulted (~1 750 faults per call
        # at 64 × 196 × 384) and made the subtractions several times slower.
        diff = torch.empty((min(step, B), N, d), dtype=x.dtype, device=x.device)
        norms = torch.empty((B, N), dtype=x.dtype, device=x.device)
        for xb, nb in zip(x.split(step), norms.split(step)):
            torch.linalg.vector_norm(torch.sub(xb, mean, out=diff[:len(xb)]), dim=-1, out=nb)
        ctx.save_for_backward(x, mean, norms)
        ctx.step = step
        return sum(r.sum() for r in norms.split(step)) / (B * N)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, mean, norms = ctx.saved_tensors
        B, N, _ = x.shape
        with torch.no_grad():
            inverse = torch.where(norms > 0, norms.reciprocal(), torch.zeros_like(norms))
            out = empty_for_overwrite(x.shape, x)
            for xb, ob, ib in zip(x.split(ctx.step), out.split(ctx.step), inverse.split(ctx.step)):
                torch.sub(xb, mean, out=ob).mul_(ib[..., None])  # u
            u_mean = out.mean(dim=(0, 1))
            scale = grad / (B * N)
            for ob in out.split(ctx.step):
                ob.sub_(u_mean).mul_(scale)
        if torch.is_grad_enabled():  # create_graph=True: a first-order gradient that refuses a second order
            out = _FirstOrderOnly.apply(out, x, grad)
        return out, None


_FirstOrderOnly = first_order_only("dse_ext's token normalization or avg_l2", "their first-order formulas")


def _mean_distance_to_mean(x: torch.Tensor, block_bytes: int = 1 << 21) -> torch.Tensor:
    """avg_l2: mean over the B·N tokens of ``x`` ``(B, N, d)`` of ‖x − x̄‖ (x̄ the mean token), a
    0-dim tensor differentiable in x (see :class:`_MeanDistanceToMean`)."""
    return _MeanDistanceToMean.apply(x, block_bytes)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum()
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


# ---------------------------------------------------------------- scale-safe token preparation
#
# Every component of DSE is scale-free except avg_l2, which is reported in the input's units
# (k-means' ``tol`` is made relative to avg_l2 without normalization). The tokens are therefore
# brought to a safe range by exact powers of two before anything squares them: float32 squares
# overflow above ~1.8e19 and underflow below ~1e-19 (~1e-23 for subnormals), which used to turn
# 1e20-scale tokens into zeros ("all tokens are identical") and 1e-30-scale tokens into wrong
# answers. Multiplying by 2**k is exact (no rounding unless a value leaves the float range), so
# the results equal those of the same data at unit scale, and the scale factors are constants
# for autograd, which keeps the gradients exact. Data in the safe range is left as it is: its
# scaled twin would give the same bits (every square, sum and quotient scales exactly).

SAFE_EXPONENT = 50  # tokens with entries up to 2**50 (and a largest entry >= 2**-50) square safely
TINY_TOKEN_LOG2 = -40  # a token whose norm is below 2**-40 (~9.1e-13) of the batch's largest is "tiny"


def _power_of_two_exponent(amax: torch.Tensor) -> torch.Tensor:
    """Integer e (int64) with ``amax = m · 2**e``, m in [0.5, 1); 0 where amax is 0."""
    _, exponent = torch.frexp(amax)
    return torch.where(amax > 0, exponent.long(), torch.zeros_like(exponent, dtype=torch.long))


def _host_reads_are_free(device: torch.device) -> bool:
    """Whether reading a tensor's value on the host costs no synchronisation (CPU tensors)."""
    return device.type == "cpu"


def _times_power_of_two(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``x · 2**k`` for integer exponents ``k`` broadcast against x (differentiable in x, exact).

    The factor is applied in two halves, so that neither leaves the dtype's range (2**149 does
    not exist in float32; rescaling a subnormal token needs it). On the CPU, where reading ``k``
    costs nothing, the passes that change nothing are skipped; elsewhere it would cost a host
    synchronisation, so both halves are always applied (each exact).
    """
    if _host_reads_are_free(x.device):
        limit = math.frexp(torch.finfo(x.dtype).max)[1] - 2  # 126 for float32, 1022 for float64
        largest = int(k.abs().max())
        if largest == 0:
            return x
        if largest <= limit:
            return x * torch.pow(2.0, k.to(x.dtype))
    half = torch.div(k, 2, rounding_mode="floor")
    return x * torch.pow(2.0, half.to(x.dtype)) * torch.pow(2.0, (k - half).to(x.dtype))


def _abs_max(x: torch.Tensor, dim=None) -> torch.Tensor:
    """max |x| (over ``dim``, kept; over everything if None); NaN/Inf propagate. Two plain
    reductions: several times faster than ``vector_norm(ord=inf)`` on the CPU."""
    if dim is None:
        return torch.maximum(x.max(), -x.min())
    return torch.maximum(x.amax(dim=dim, keepdim=True), x.amin(dim=dim, keepdim=True).neg())


def _safe_exponent(amax: torch.Tensor) -> torch.Tensor:
    """The exponent that brings ``amax`` into [0.5, 1), or 0 where it is within ``2**±50``
    already (its squares neither overflow nor underflow: scaling it would change no bit)."""
    exponent = _power_of_two_exponent(amax)
    return torch.where(exponent.abs() <= SAFE_EXPONENT, torch.zeros_like(exponent), exponent)


def _unit_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised tokens ``(B, N, d)``, at any scale, with bounded gradients, and whether the
    input was finite (a 0-dim bool tensor, read by the caller with its other checks).

    - Ordinary tokens: ``x / ‖x‖``. When a token's largest entry is beyond ``2**±50``, on
      ``x · 2**-e`` (e: the exponent of that entry), so no square overflows or underflows
      whatever the token's scale.
    - Zero tokens (dead ReLU positions, masked or padded tokens) stay 0 with a zero gradient
      (``F.normalize`` gave them gradients of ~1e12 × the upstream gradient).
    - Tiny tokens, with norms below ``2**TINY_TOKEN_LOG2`` (~1e-12) of the batch's largest token
      norm R, are divided by that bound instead of their norm, as ``F.normalize`` does with its
      absolute ``eps=1e-12``, but relative to R so the result does not depend on the units.
      Their output is shorter than 1 and their gradient is bounded by ``2**40 / R`` × the
      upstream gradient.

    No host synchronisation off the CPU.
    """
    with torch.no_grad():
        amax = _abs_max(x, dim=-1)  # (B, N, 1)
        finite = torch.isfinite(amax).all()  # NaN and Inf reach the max of their token
        zero = amax == 0
        exponent = _safe_exponent(amax)
    y = _times_power_of_two(x, -exponent)  # a scaled token's largest entry is in [0.5, 1)
    with torch.no_grad():  # its gradient is _Normalize's
        norm = torch.linalg.vector_norm(y, dim=-1, keepdim=True)  # finite; > 0 except for zero tokens
        # log2 of every token's true norm, in float64 (the true norm itself may not exist in x's dtype)
        log_norm = torch.where(zero, -math.inf, norm.double().log2() + exponent.double())
        tiny_below = log_norm.max() + TINY_TOKEN_LOG2
        tiny = ~zero & (log_norm < tiny_below)
        # divisor of a tiny token in y's units: 2**tiny_below / 2**exponent (may overflow: output 0)
        bound = torch.pow(2.0, (tiny_below - exponent.double())).to(x.dtype)
        fixed = torch.where(zero, torch.full_like(norm, math.inf), bound)
        ordinary = ~(zero | tiny)
    if _host_reads_are_free(x.device) and bool(ordinary.all()):
        return _Normalize.apply(y, norm, None), finite
    # The divisor is constant on zero and tiny tokens (no gradient through the norm there).
    return _Normalize.apply(y, torch.where(ordinary, norm, fixed), ordinary), finite


_NORMALIZE_BLOCK_BYTES = 1 << 20  # tokens per block of _Normalize's backward, in bytes of one operand


class _Normalize(torch.autograd.Function):
    """``y / divisor`` per token, ``y`` ``(..., d)``, ``divisor`` ``(..., 1)``: ‖y‖ where ``ordinary``
    (``(..., 1)`` bool, ``None``: everywhere), a constant elsewhere (see :func:`_unit_tokens`).

    The gradient is the normalization's own, ``(g − u·(g·u)) / ‖y‖`` for the ordinary tokens
    (``u`` the output) and ``g / divisor`` for the others (0 for zero tokens, whose divisor is
    inf), in one pass over the tokens (on the CPU in blocks that stay in the caches) instead of
    autograd's six through the norm and the division. The forward is the same division as before
    (the same bits). First order only.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, divisor: torch.Tensor, ordinary: torch.Tensor | None) -> torch.Tensor:
        # expanded like F.normalize: a faster division on the CPU
        out = torch.div(y, divisor.expand_as(y), out=empty_for_overwrite(y.shape, y))
        ctx.save_for_backward(out, divisor, ordinary)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, divisor, ordinary = ctx.saved_tensors
        with torch.no_grad():
            # On the CPU, blocks of tokens that fit in the caches: each reads g and u once and writes
            # its result once, instead of three passes over all tokens (one block on a GPU, where
            # each block costs kernel launches). Every token's arithmetic is the same either way.
            d = out.shape[-1]
            rows = out.numel() // max(1, d)
            result = empty_for_overwrite(out.shape, out)  # contiguous: its (rows, d) view is written in place
            g, u, r = grad.expand_as(out).reshape(rows, d), out.reshape(rows, d), result.view(rows, d)
            div = divisor.expand(*out.shape[:-1], 1).reshape(rows, 1)
            keep = None if ordinary is None else ordinary.expand(*out.shape[:-1], 1).reshape(rows, 1)
            step = max(1, _NORMALIZE_BLOCK_BYTES // max(1, d * out.element_size()) if out.is_cpu else rows)
            for i in range(0, rows, step):
                block = slice(i, i + step)
                along = torch.linalg.vecdot(g[block], u[block], dim=-1).unsqueeze(-1)  # g·u per token
                if keep is not None:
                    along = torch.where(keep[block], along, torch.zeros_like(along))
                torch.addcmul(g[block], u[block], along, value=-1, out=r[block]).div_(div[block].expand_as(u[block]))
        if torch.is_grad_enabled():  # create_graph=True: a first-order gradient that refuses a second order
            result = _FirstOrderOnly.apply(result, out, grad)
        return result, None, None


def _scaled_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x · 2**k, k, finite, nonzero)`` for un-normalised tokens: the whole tensor scaled so that
    its largest entry is in [0.5, 1) (k = 0 when that entry is within ``2**±50`` already); one
    factor for the whole batch keeps every distance ratio. ``finite`` and ``nonzero`` (0-dim
    bool tensors) are read by the caller with its other checks: no host synchronisation here."""
    with torch.no_grad():
        amax = _abs_max(x)
        k = -_safe_exponent(amax)
    return _times_power_of_two(x, k), k, torch.isfinite(amax), amax > 0


def _host_read(*values: torch.Tensor) -> list[float]:
    """0-dim tensors as Python floats, with one host synchronisation for all of them."""
    return torch.stack([v.detach().to(torch.float64).reshape(()) for v in values]).tolist()


def _host_read_arrays(*values: torch.Tensor) -> list[np.ndarray]:
    """Tensors (floats, or integers up to 2**53) as float64 numpy arrays of their shapes, with one
    host synchronisation for all of them."""
    flat = torch.cat([v.detach().to(torch.float64).reshape(-1) for v in values]).cpu().numpy()
    ends = np.cumsum([v.numel() for v in values])
    return [part.reshape(tuple(v.shape)) for part, v in zip(np.split(flat, ends[:-1]), values)]


def _member_counts(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Member counts ``(P, k)`` int64 of labels ``(P, M)`` in ``[-1, k)`` (-1 counts nowhere), on
    labels' device, without a host synchronisation: an integer scatter-add over one flat dimension
    (deterministic on CUDA also under ``torch.use_deterministic_algorithms``)."""
    P = labels.shape[0]
    key = torch.where(labels >= 0, labels, k) + (k + 1) * torch.arange(P, device=labels.device)[:, None]
    bins = torch.zeros(P * (k + 1), dtype=torch.long, device=labels.device)
    return bins.scatter_add_(0, key.reshape(-1), torch.ones_like(key).reshape(-1)).reshape(P, k + 1)[:, :k]


def _merge_identical_centroids(centroids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Labels ``(P, M)`` with every cluster whose centroid coincides with that of a
    lower-numbered cluster merged into the lowest such cluster; -1 stays -1.

    k-means++ seeds duplicate centroids when a problem has fewer distinct tokens than clusters;
    which duplicate is drawn differs between backends (the compiled seeding measures distances
    with a GEMM, whose rounding leaves tiny non-zero weights on duplicates of chosen points),
    and a float64 cluster mean of identical tokens can differ from them by the rounding of its
    sum, so the tokens may move to an exact duplicate. "Coincide" is therefore: closer than that
    rounding (``8 · M · eps(float64)`` times the largest centroid norm, ~1e-11 for 10⁴ tokens,
    far below any distance DSE resolves). Merged, the partition is the same in every backend.
    """
    P, k, _ = centroids.shape
    c = centroids.double()
    tol = 8 * labels.shape[1] * torch.finfo(torch.float64).eps * c.norm(dim=-1).amax(dim=1)  # (P,)
    canon = torch.arange(k, device=labels.device).repeat(P, 1)  # (P, k)
    for j in range(1, k):
        close = (c[:, :j] - c[:, j:j + 1]).norm(dim=-1) <= tol[:, None]  # (P, j), direct differences
        first = close.to(torch.uint8).argmax(dim=1, keepdim=True)  # the lowest coinciding cluster
        canon[:, j] = torch.where(close.any(dim=1), canon.gather(1, first)[:, 0], canon[:, j])
    if _host_reads_are_free(labels.device) and bool((canon == torch.arange(k)).all()):
        return labels  # nothing merged (reading that elsewhere would cost a host synchronisation)
    merged = canon.gather(1, labels.clamp(min=0))
    return torch.where(labels >= 0, merged, labels)


def _check_clusters(k: int, name: str, tokens: int, where: str, minimum: int = 1) -> None:
    check_positive_int(k, name, minimum=minimum)
    if tokens < k:
        raise ValueError(
            f"too few tokens for {name}={k}: {where} has only {tokens} token(s); "
            f"lower {name} or pass more tokens"
        )


def dse(features, *, normalize: bool = True, local_clusters: int = 3, global_clusters: int = 24,
        group_size: int | None = 8, max_iters: int = 20, tol: float = 1e-4, m_dim: str = "per_position",
        seed: int = 0, local_labels=None, global_labels=None, init: str = "k-means++",
        backend: str = "auto") -> DSEOutput:
    """Dense representation Structure Estimator of patch features (definitions: README, "The metric").

    Args:
        features: ``(B, N, d)`` patch tokens (B images ≥ 2, N tokens per image, d channels), any
            finite values at any scale; float16/bfloat16 are computed in float32.
        normalize: L2-normalize every token first. All-zero tokens (dead or masked positions) stay
            0 and get a zero gradient; tokens shorter than 2**-40 (~1e-12) times the batch's
            longest token are divided by that bound instead of their norm (``F.normalize``'s
            ``eps``, made relative), which keeps their gradient bounded.
        local_clusters: k-means clusters per image (k_l).
        global_clusters: k-means clusters per group of images (k_g ≥ 2).
        group_size: images per group for the global clustering (the last group may be smaller);
            ``None``: the whole batch is one group.
        max_iters, tol: k-means stopping rule (see :func:`dse_ext.functional.kmeans`): a problem
            stops once its centroid shift is ``<= tol``, in the units of the normalized tokens;
            with ``normalize=False`` once it is ``<= tol · avg_l2`` (relative, so scale-free).
        m_dim: ``"per_position"`` (metric form: mean effective rank of N random one-token-per-image
            matrices) or ``"pooled"`` (effective rank of all B·N tokens, the regularizer's form).
        seed: an int in ``[0, 2**63)``; seeds k-means++ and the position permutations; torch's
            global RNG is untouched.
        local_labels, global_labels: optional ``(B, N)`` integer labels in ``[0, k)`` replacing
            k-means (e.g. segmentation masks); centroids are then the label means.
        init: k-means++ sampling, ``"k-means++"`` (∝ D²) or ``"k-means++-linear"`` (∝ D).
        backend: ``"ext"`` (compiled ops), ``"reference"`` (pure PyTorch) or ``"auto"``
            (compiled when available for the device).

    Returns:
        :class:`DSEOutput` of 0-dim tensors. Distances are divided by ``avg_l2`` (mean distance
        of a token to the batch mean), so every component is scale-free; ``avg_l2`` itself is in
        the units of the normalized tokens, or of ``features`` when ``normalize=False``.

    Scale: the tokens are brought to a safe range by exact powers of two (per token before the
    normalization; for the whole tensor when ``normalize=False``), so ``dse(x * 2**s)`` equals
    ``dse(x)`` (``avg_l2`` times ``2**s`` without normalization) also for tokens whose squares
    would overflow or underflow, e.g. entries of 1e20 or 1e-30 in float32. Only an ``avg_l2``
    that does not exist in the dtype (features near its largest value) is refused.

    Clusters: a k-means cluster is a set of tokens, not a centroid. With fewer distinct tokens
    than clusters (in an image, or a group of images) k-means++ seeds duplicate centroids.
    Clusters whose centroids coincide (to the rounding of a mean, ~1e-11 of the token scale) are
    merged into the lowest-numbered one, and empty clusters (so merged, or left empty by Lloyd's
    iterations) are no clusters: they add no css and their centroids are not "other centroids"
    for M_inter. Ties between equally near centroids go to the lowest index in every backend.
    The same holds for ``global_labels``: a label that no token carries is not a cluster. A
    group whose tokens are all identical has one cluster and no M_inter.

    Differentiable with respect to ``features`` (the regularizer's use, see
    :class:`dse_ext.DSERegularizer`): gradients flow through the normalization, ``avg_l2``, the
    css, the effective ranks and the distances; the clustering (k-means or the given labels) and
    the centroids are constants. Second-order gradients (double backward) through the compiled
    ops are not supported and raise; first-order gradients with ``create_graph=True`` work.
    """
    x = as_float_tensor(features, "features", check_finite=False)  # checked through the token maxima below
    check_ndim(x, (3,), "features", "(B, N, d)")
    B, N, d = x.shape
    if B < 2:
        raise ValueError(f"DSE needs at least 2 images (B >= 2), got B = {B}")
    if group_size is None:
        group_size = B
    check_positive_int(group_size, "group_size")
    if m_dim not in M_DIM_MODES:
        raise ValueError(f"m_dim must be one of {M_DIM_MODES}, got {m_dim!r}")
    _check_clusters(local_clusters, "local_clusters", N, "an image")
    smallest_group = (B - (-(-B // group_size) - 1) * group_size) * N  # the last group's tokens
    _check_clusters(global_clusters, "global_clusters", smallest_group, "a group of images", minimum=2)
    if local_labels is not None:
        local_labels = check_labels(local_labels, (B, N), local_clusters, x.device, "local_labels")
    if global_labels is not None:
        global_labels = check_labels(global_labels, (B, N), global_clusters, x.device, "global_labels")
    seed = check_seed(seed)
    check_kmeans_options(max_iters, tol, init)
    ops = _select_backend(backend, x.device)
    x = x.contiguous()  # a view and its copy give bit-identical results

    # Tokens in a safe range (exact powers of two, see _unit_tokens / _scaled_tokens): every
    # component below is scale-free, avg_l2 is reported in the input's units.
    # Host synchronisations (what a CUDA training step pays for): one after the clusterings,
    # which checks the input and reads the cluster sizes (the css kernels plan their batches
    # with them, and the checks of the clusterings are functions of them); on CUDA one more at
    # the end, for the eigensolvers' status. With normalize=False one more before the
    # clusterings: k-means' tol is relative to avg_l2. Off the CPU, k-means runs before the
    # input check when normalize=True: it is safe on any input, and its labels are discarded
    # when the check fails.
    units = None  # exponent k of the scaling x · 2**k without normalization
    if normalize:
        x, finite = _unit_tokens(x)
        nonzero = finite  # zero tokens are allowed (they stay 0); all-zero input is "identical" below
    else:
        x, units, finite, nonzero = _scaled_tokens(x)
    avg_l2 = _mean_distance_to_mean(x)
    scale = x.norm(dim=-1).mean()
    avg_in_units = avg_l2 if units is None else _times_power_of_two(avg_l2, -units)  # back to the input's units
    input_flags = (finite, nonzero, avg_l2, scale, torch.isfinite(avg_in_units) & (avg_in_units > 0))

    def check_input(finite_ok, nonzero_ok, avg_value, scale_value, avg_ok):
        if not finite_ok:
            as_float_tensor(features, "features")  # raises with the count of bad values
            raise ValueError("features contain NaN/Inf values; DSE is undefined for non-finite features")
        if not nonzero_ok:
            raise ValueError("all tokens are identical (every entry is 0): DSE is undefined for constant features")
        if not avg_value > 16 * torch.finfo(x.dtype).eps * scale_value:
            raise ValueError(
                "all tokens are identical" + (" after L2 normalisation (normalize=True: tokens that differ only in "
                                              "length, or are all 0, become identical)" if normalize else "")
                + ": DSE is undefined for constant features")
        if not avg_ok:
            raise ValueError(
                f"avg_l2 of these features is not representable in {avg_l2.dtype} (the tokens are at the edge of "
                f"its range, e.g. entries near {torch.finfo(avg_l2.dtype).max:.1e}); pass float64 features or "
                "rescale them")

    # Checked before k-means where that costs no extra synchronisation (CPU tensors), where the
    # reference's k-means would refuse bad input with its own words, and without normalization.
    checked_first = not normalize or ops is reference or _host_reads_are_free(x.device)
    if checked_first:
        flags = _host_read(*input_flags)
        check_input(*flags)
    # tol: in the units of the unit tokens; without normalization relative to avg_l2, the one
    # scale of the features that every component is divided by (so that DSE is scale-free).
    kmeans_opts = dict(max_iters=max_iters, tol=tol if normalize else tol * flags[2], init=init)

    # The clusterings: inside each image (local), and over groups of images (global).
    if local_labels is None:
        centroids_l, local_labels = ops.kmeans(x.detach(), local_clusters, seed=derive_seed(seed, "local"),
                                               **kmeans_opts)
        local_labels = _merge_identical_centroids(centroids_l, local_labels)
    xg, counts = _group(x, group_size)
    if global_labels is None:
        centroids, labels_g = ops.kmeans(xg.detach(), global_clusters, counts=counts,
                                         seed=derive_seed(seed, "global"), **kmeans_opts)
        labels_g = _merge_identical_centroids(centroids, labels_g)
    else:
        labels_g = _group_labels(global_labels, group_size)
        centroids, _ = _segment_means(xg.detach(), labels_g, global_clusters)

    # The one read in the middle: the input's checks and the cluster sizes.
    flags, sizes_local, sizes_global = _host_read_arrays(
        torch.stack([f.detach().to(torch.float64).reshape(()) for f in input_flags]),
        _member_counts(local_labels, local_clusters), _member_counts(labels_g, global_clusters))
    if not checked_first:
        check_input(*flags.tolist())
    sizes_local, sizes_global = sizes_local.astype(np.int64), sizes_global.astype(np.int64)
    if not (sizes_local >= 2).any():
        raise ValueError("no image has a local cluster of >= 2 tokens: M_intra_image is undefined; "
                         "lower local_clusters or pass more tokens per image")
    if not (sizes_global >= 2).any():
        raise ValueError("no global cluster has >= 2 tokens: M_intra_batch is undefined; lower global_clusters")
    if not ((sizes_global > 0).sum(axis=1) >= 2).any():
        raise ValueError("every group has a single non-empty cluster (all its tokens are identical, or the labels "
                         "name one cluster): M_inter is undefined")

    def components():
        """(M_intra_image, M_intra_batch, M_inter, M_dim) from the clusterings.

        M_dim is built first and the local css last: autograd runs the backward of the newest
        node first, so the first gradient to reach the tokens is the local css's, a tensor of its
        own that the others are then added into in place. Arriving first, the gradient through a
        reshaped view (M_dim's pooled tokens, the groups of images) would be a view, which
        autograd does not add into: one more batch-sized tensor per backward.
        """
        if m_dim == "per_position":
            gen = torch.Generator().manual_seed(derive_seed(seed, "positions"))
            perm = torch.rand(B, N, generator=gen).argsort(dim=1)  # π_b, one per image, the same on every device
            if x.device.type == "cuda":  # an asynchronous copy (a pageable one would synchronise)
                perm = perm.pin_memory().to(x.device, non_blocking=True)
            else:
                perm = perm.to(x.device)
            rows = (perm + N * torch.arange(B, device=x.device)[:, None]).t()  # (N, B): S_n = x[b, π_b(n)]
            m_dim_value = ops.effective_rank(x.reshape(B * N, d), index=rows).mean()
        else:
            m_dim_value = ops.effective_rank(x.reshape(B * N, d))

        css_global, n_global = ops.cluster_css(xg, labels_g, global_clusters, sizes=torch.from_numpy(sizes_global))
        m_intra_batch = _masked_mean(css_global, n_global >= 2) / avg_l2

        # Empty clusters are not clusters: their (stale or duplicate) centroids are no "other centroid".
        present = n_global > 0
        dist = ops.nearest_other_centroid_distance(xg, centroids, labels_g, present)
        per_group = _masked_mean(dist, labels_g >= 0, dim=1)
        m_inter = _masked_mean(per_group, present.sum(dim=1) >= 2) / avg_l2

        css_local, n_local = ops.cluster_css(x, local_labels, local_clusters, sizes=torch.from_numpy(sizes_local))
        ok_local = n_local >= 2
        per_image = _masked_mean(css_local, ok_local, dim=1)
        m_intra_image = _masked_mean(per_image, ok_local.any(dim=1)) / avg_l2
        return m_intra_image, m_intra_batch, m_inter, m_dim_value

    with _ops.deferred_eigen_status(x.device) as eigen_failed:
        m_intra_image, m_intra_batch, m_inter, m_dim_value = components()
    if eigen_failed is not None and _host_read(eigen_failed)[0]:
        # A batched eigensolver failed on some matrix (never seen in practice): recompute with
        # the status read after every call, which redoes the failed calls with torch.linalg.eigh.
        m_intra_image, m_intra_batch, m_inter, m_dim_value = components()

    m_intra = 0.5 * (m_intra_image + m_intra_batch)
    avg_l2 = avg_in_units
    return DSEOutput(
        dse=m_inter - m_intra + m_dim_value,
        m_inter=m_inter,
        m_intra=m_intra,
        m_intra_image=m_intra_image,
        m_intra_batch=m_intra_batch,
        m_dim=m_dim_value,
        avg_l2=avg_l2,
    )
