"""Label-free scores by name: the registry behind ``dse score --scores``.

A score turns the features of one checkpoint into named columns of the results table. Two kinds:

- ``needs="tokens"`` (the default): a function of a :class:`ScoreBatch`, the dense patch tokens of
  ``dse_batch`` images (and, when ``embeddings=True``, their image-level embeddings). It is called
  on every DSE evaluation of a checkpoint (the image subset is cut into ``num_images / dse_batch``
  near-equal chunks) and its columns are averaged over them, weighted by chunk size, as the DSE
  components are. Every such score of a checkpoint sees the same chunks from one model forward.
- ``needs="views"``: a function of a :class:`ViewBatch`, the image-level embeddings of augmented
  views of the first images of the subset (LiDAR); called once per checkpoint. The views are
  made once per run by :func:`dse_ext.augment.random_views`, seeded, so every checkpoint sees
  the same pixels.

Built in:

==================  ==========================================  ========================================
name                columns                                     what
==================  ==========================================  ========================================
``dse``             dse, m_inter, m_intra, m_intra_image,       :func:`dse_ext.dse` (its options:
                    m_intra_batch, m_dim, avg_l2                ``dse_options``)
``rankme``          rankme                                      :func:`dse_ext.baselines.rankme` of the
                                                                image embeddings
``dense_rankme``    dense_rankme                                :func:`dse_ext.baselines.dense_rankme`
                                                                of the patch tokens
``alpha_req``       alpha_req                                   :func:`dse_ext.baselines.alpha_req` of
                                                                the image embeddings
``lidar``           lidar                                       :func:`dse_ext.baselines.lidar` of the
                                                                views' embeddings
==================  ==========================================  ========================================

Image embeddings: the model's pooled pre-logits output (timm: ``forward_head(pre_logits=True)``,
the class token of a ViT with token pooling, the global average of a CNN); for other models the
mean of the patch tokens. Each score also says which value is better (:attr:`Score.quality`):
higher, except α-ReQ, whose authors associate good features with α near 1 (quality ``-|α - 1|``).

Register your own::

    import dse_ext

    @dse_ext.register_score("token_norm")
    def token_norm(batch):                       # batch.tokens: (n, N, d)
        return {"token_norm": float(batch.tokens.norm(dim=-1).mean())}

    dse_ext.score_checkpoints(ckpts, model="vit_small_patch16_224", images="imgs/",
                              out="results.csv", scores=["dse", "token_norm"])

(on the command line: ``dse score --import mymodule --scores dse,token_norm``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

__all__ = ["Score", "ScoreBatch", "ViewBatch", "register_score", "get_score", "available_scores", "parse_scores",
           "score_columns", "LIDAR_IMAGES", "LIDAR_VIEWS"]

LIDAR_IMAGES = 256  # images of the subset whose views LiDAR scores (the first ones)
LIDAR_VIEWS = 4     # augmented views per image

# Columns of the results table that no score may claim.
RESERVED = frozenset({"checkpoint", "epoch", "step", "num_images", "seconds", "file", "file_size", "file_mtime_ns",
                      "settings", "run", "dse_lambda"})


@dataclass(frozen=True)
class ScoreBatch:
    """What a ``needs="tokens"`` score sees: one DSE evaluation's images."""

    tokens: torch.Tensor                 # (n, N, d) float32 patch tokens
    embeddings: torch.Tensor | None      # (n, d) image-level embeddings, or None when no score needs them
    seed: int                            # the run's seed (an int in [0, 2**63))
    dse_options: dict = field(default_factory=dict)  # options of dse_ext.dse for this run


@dataclass(frozen=True)
class ViewBatch:
    """What a ``needs="views"`` score sees: embeddings of augmented views, once per checkpoint."""

    embeddings: torch.Tensor  # (m, V, d): V views of each of m images
    seed: int


@dataclass(frozen=True)
class Score:
    """A registered score (see the module docs)."""

    name: str
    fn: Callable[..., dict]
    columns: tuple[str, ...]
    needs: str = "tokens"
    embeddings: bool = False
    quality: Callable[[dict], float] | None = None
    description: str = ""

    def value(self, row: dict) -> float:
        """How good a row's value is by this score (higher = predicted better)."""
        if self.quality is not None:
            return float(self.quality(row))
        return float(row[self.columns[0]])

    def __call__(self, batch) -> dict:
        out = self.fn(batch)
        if not isinstance(out, dict) or set(out) != set(self.columns):
            got = sorted(out) if isinstance(out, dict) else type(out).__name__
            raise ValueError(f"score {self.name!r} must return a dict with the columns {list(self.columns)}, "
                             f"got {got}")
        return {name: float(out[name]) for name in self.columns}


_REGISTRY: dict[str, Score] = {}


def register_score(name: str, fn: Callable | None = None, *, columns: Sequence[str] | None = None,
                   needs: str = "tokens", embeddings: bool = False, quality: Callable[[dict], float] | None = None,
                   description: str = "", replace: bool = False):
    """Registers a score; usable as ``register_score(name, fn)`` or as a decorator ``@register_score(name)``.

    Args:
        name: the score's name (``--scores NAME``): letters, digits and ``_``.
        fn: ``fn(batch) -> {column: float}`` with batch a :class:`ScoreBatch` (``needs="tokens"``)
            or a :class:`ViewBatch` (``needs="views"``).
        columns: the columns it returns (default: ``(name,)``); none may be a reserved column of
            the results table or a column of another registered score.
        needs: ``"tokens"`` or ``"views"`` (see the module docs).
        embeddings: whether the :class:`ScoreBatch` must carry image-level embeddings.
        quality: ``quality(row) -> float``, higher = predicted better (default: the first column).
        description: one line for ``dse score --help``-style listings.
        replace: allow replacing a registered score of the same name.
    """
    if fn is None:
        return lambda f: register_score(name, f, columns=columns, needs=needs, embeddings=embeddings,
                                        quality=quality, description=description, replace=replace) and f
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a score name must be an identifier (letters, digits, _), got {name!r}")
    if not callable(fn):
        raise TypeError(f"score {name!r}: fn must be callable, got {type(fn).__name__}")
    if needs not in ("tokens", "views"):
        raise ValueError(f"score {name!r}: needs must be 'tokens' or 'views', got {needs!r}")
    columns = tuple(columns) if columns is not None else (name,)
    if not columns or not all(isinstance(c, str) and c.isidentifier() for c in columns):
        raise ValueError(f"score {name!r}: columns must be a non-empty list of identifiers, got {columns!r}")
    reserved = sorted(set(columns) & RESERVED)
    if reserved:
        raise ValueError(f"score {name!r}: {reserved} are columns of the results table itself; name them otherwise")
    if name in _REGISTRY and not replace:
        raise ValueError(f"a score named {name!r} is registered already (pass replace=True to replace it)")
    for other in _REGISTRY.values():
        clash = sorted(set(columns) & set(other.columns))
        if clash and other.name != name:
            raise ValueError(f"score {name!r}: columns {clash} belong to the score {other.name!r} already")
    score = Score(name, fn, columns, needs, embeddings, quality, description)
    _REGISTRY[name] = score
    return score


def get_score(name: str) -> Score:
    """The registered score ``name``; ``ValueError`` naming the available ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown score {name!r}; the registered scores are {available_scores()} (register your "
                         "own with dse_ext.register_score, or --import a module that does)") from None


def available_scores() -> list[str]:
    return sorted(_REGISTRY)


def parse_scores(spec: str | Sequence[str] | None) -> list[Score]:
    """Scores from ``"dse,rankme"`` or ``["dse", "rankme"]`` (None: ``["dse"]``), in the order given,
    repeats dropped."""
    if spec is None:
        spec = ["dse"]
    if isinstance(spec, str):
        spec = [part.strip() for part in spec.split(",")]
    names = list(dict.fromkeys(spec))
    if not names or any(not isinstance(n, str) or not n for n in names):
        raise ValueError(f"scores must name at least one score, e.g. 'dse,rankme', got {spec!r}")
    return [get_score(n) for n in names]


def score_columns(scores: Sequence[Score]) -> list[str]:
    return [column for score in scores for column in score.columns]


# ---------------------------------------------------------------- the built-in scores
def _dse(batch: ScoreBatch) -> dict:
    from .metric import dse

    return dse(batch.tokens, seed=batch.seed, **batch.dse_options).to_dict()


def _rankme(batch: ScoreBatch) -> dict:
    from .baselines import rankme

    return {"rankme": rankme(batch.embeddings)}


def _dense_rankme(batch: ScoreBatch) -> dict:
    from .baselines import dense_rankme

    return {"dense_rankme": dense_rankme(batch.tokens)}


def _alpha_req(batch: ScoreBatch) -> dict:
    from .baselines import alpha_req

    return {"alpha_req": alpha_req(batch.embeddings)}


def _lidar(batch: ViewBatch) -> dict:
    from .baselines import lidar

    return {"lidar": lidar(batch.embeddings)}


register_score("dse", _dse, columns=("dse", "m_inter", "m_intra", "m_intra_image", "m_intra_batch", "m_dim", "avg_l2"),
               description="DSE and its components (dse_ext.dse)")
register_score("rankme", _rankme, embeddings=True, description="RankMe of the image embeddings (Garrido et al. 2023)")
register_score("dense_rankme", _dense_rankme, description="RankMe of all patch tokens (our dense variant)")
register_score("alpha_req", _alpha_req, embeddings=True, quality=lambda row: -abs(row["alpha_req"] - 1.0),
               description="α-ReQ power-law decay of the embedding spectrum (Agrawal et al. 2022); better near 1")
register_score("lidar", _lidar, needs="views",
               description=f"LiDAR of augmented views (Thilak et al. 2024): {LIDAR_VIEWS} views of the first "
                           f"{LIDAR_IMAGES} images")
