"""A small ViT and two self-supervised methods of different families, sized for a CPU.

- :class:`DINO` — self-distillation (Caron et al. 2021): a student and an EMA teacher with a
  prototype head; the teacher's output is centred and sharpened, the student matches it across
  two views. Scaled down (128 prototypes, a 3-layer head with a 64-d bottleneck).
- :class:`MoCoV3` — contrastive (Chen et al. 2021): a base encoder with projector and predictor,
  a momentum encoder, a symmetric InfoNCE loss over the batch (temperature 0.2).

Both take a batch of uint8 images, make two augmented views (:func:`two_views`) and return the
loss; an optional :class:`dse_ext.DSERegularizer` on the student's patch tokens turns a run into
the regularized one (``loss − β·DSE``). :func:`train` runs the epochs and saves a checkpoint in
the method's own layout (DINO: ``teacher``/``student`` with ``backbone.``; MoCo v3:
``state_dict`` with ``module.base_encoder.``/``module.momentum_encoder.``), which
:func:`dse_ext.load_weights` reads back like any real run's.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..images import normalize

__all__ = ["ViTConfig", "make_vit", "two_views", "multi_crop", "DINO", "IBOT", "MoCoV3", "train", "METHODS"]


@dataclass(frozen=True)
class ViTConfig:
    """The backbone: 64 × 64 images in 8 × 8 patches (64 patch tokens + a class token)."""

    img_size: int = 64
    patch_size: int = 8
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 3
    mlp_ratio: float = 2.0

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


def make_vit(config: ViTConfig = ViTConfig(), generator: torch.Generator | None = None) -> nn.Module:
    """A timm ``VisionTransformer`` without a classifier, initialised from ``generator``.

    timm initialises from torch's global RNG; to keep that untouched and the run seeded, the
    weights are then redrawn from ``generator`` with the same truncated-normal rule (std 0.02 for
    linear layers and embeddings, ones/zeros for norms).
    """
    from timm.models.vision_transformer import VisionTransformer

    with torch.random.fork_rng(devices=[]):
        model = VisionTransformer(img_size=config.img_size, patch_size=config.patch_size, num_classes=0,
                                  embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads,
                                  mlp_ratio=config.mlp_ratio, dynamic_img_size=True)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                p.copy_(torch.ones_like(p) if (name.endswith("weight") and "norm" in name) else torch.zeros_like(p))
            else:
                p.copy_((torch.randn(p.shape, generator=generator) * 0.02).clamp_(-0.04, 0.04))
    return model


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def augment(images: torch.Tensor, g: torch.Generator, *, min_scale: float = 0.35, max_scale: float = 1.0,
            size: int | None = None) -> torch.Tensor:
    """One random view per image: resized crop (area ``min_scale``–``max_scale`` of the image),
    flip, colour jitter (brightness, contrast, saturation and a hue rotation), grayscale.

    images: uint8 ``(B, 3, S, S)``; returns float32 ``(B, 3, size, size)`` (``size`` defaults to S)
    normalized with the ImageNet mean/std. All randomness comes from ``g``.
    """
    x = images.float() / 255.0
    B = x.shape[0]
    out_size = size or x.shape[-1]
    scale = _uniform(B, min_scale, max_scale, g).sqrt()        # side fraction
    aspect = torch.exp(_uniform(B, math.log(3 / 4), math.log(4 / 3), g))
    sx, sy = (scale * aspect.sqrt()).clamp(max=1.0), (scale / aspect.sqrt()).clamp(max=1.0)
    tx, ty = (1 - sx) * _uniform(B, -1, 1, g), (1 - sy) * _uniform(B, -1, 1, g)
    flip = torch.where(torch.rand(B, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
    grid = F.affine_grid(theta, [B, 3, out_size, out_size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    jitter = torch.rand(B, generator=g) < 0.8
    brightness = torch.where(jitter, _uniform(B, 0.6, 1.4, g), 1.0).view(B, 1, 1, 1)
    contrast = torch.where(jitter, _uniform(B, 0.6, 1.4, g), 1.0).view(B, 1, 1, 1)
    saturation = torch.where(jitter, _uniform(B, 0.6, 1.4, g), 1.0).view(B, 1, 1, 1)
    x = x * brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray) * saturation + gray
    x = _rotate_hue(x, torch.where(jitter, _uniform(B, -math.pi, math.pi, g), 0.0))
    to_gray = (torch.rand(B, generator=g) < 0.2).view(B, 1, 1, 1)
    x = torch.where(to_gray, gray.expand_as(x), x).clamp(0, 1)
    return normalize((x * 255.0).round().to(torch.uint8))


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotates the colours of each image (B, 3, H, W) about the grey axis by ``angle`` (B,) radians.

    The hue of every pixel turns by the same angle while its grey level stays: colour alone then
    does not tell two views of one image apart from views of another.
    """
    k = torch.full((3,), 1 / math.sqrt(3))
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    outer = torch.outer(k, k)
    c, s_ = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    rotation = c * torch.eye(3) + s_ * cross + (1 - c) * outer  # Rodrigues, (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", rotation, x)


def two_views(images: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return augment(images, g), augment(images, g)


LOCAL_SCALE = (0.05, 0.3)  # area of a local crop (DINO's multi-crop), drawn at half the image side


def multi_crop(images: torch.Tensor, g: torch.Generator, local_crops: int) -> tuple[torch.Tensor, ...]:
    """Two global views (:func:`two_views`) and ``local_crops`` local ones: crops of 5–30 % of
    the area at half the image size (``(B, 3, S/2, S/2)``), as DINO's multi-crop."""
    size = images.shape[-1] // 2
    return two_views(images, g) + tuple(augment(images, g, min_scale=LOCAL_SCALE[0], max_scale=LOCAL_SCALE[1],
                                                size=size) for _ in range(local_crops))


def _mlp(sizes: list[int], batch_norm: bool, last_bn: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        layers.append(nn.Linear(a, b, bias=not batch_norm))
        if batch_norm and (not last or last_bn):
            layers.append(nn.BatchNorm1d(b, affine=not last))
        if not last:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def _init_(module: nn.Module, g: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                bound = 1 / math.sqrt(m.in_features)
                m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 2 - 1) * bound)
                if m.bias is not None:
                    m.bias.zero_()
    return module


def _ema_(target: nn.Module, source: nn.Module, momentum: float) -> None:
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


POOLS = ("cls", "mean")
SCHEDULES = ("cosine", "constant")


def _tokens(backbone: nn.Module, x: torch.Tensor, pool: str = "cls") -> tuple[torch.Tensor, torch.Tensor]:
    """(image embedding (B, d), patch tokens (B, N, d)) after the final norm. The image embedding
    is the class token (``pool="cls"``) or the mean of the patch tokens (``pool="mean"``)."""
    out = backbone.forward_features(x)
    patches = out[:, backbone.num_prefix_tokens:]
    return (out[:, 0] if pool == "cls" else patches.mean(1)), patches


def _momentum(base: float, progress: float, schedule: str) -> float:
    """EMA momentum at ``progress`` (0–1) of training: ``base`` throughout (``"constant"``) or
    rising from ``base`` to 1 on a cosine (``"cosine"``, as DINO and MoCo v3 do)."""
    if schedule == "constant":
        return base
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


def _check_choices(pool: str, schedule: str) -> None:
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"momentum_schedule must be one of {SCHEDULES}, got {schedule!r}")


class DINO(nn.Module):
    """DINO-style self-distillation on two global views (no multi-crop)."""

    family = "self-distillation"

    def __init__(self, backbone: nn.Module, g: torch.Generator, *, prototypes: int = 128, bottleneck: int = 64,
                 hidden: int = 256, teacher_temp: float = 0.04, student_temp: float = 0.1,
                 center_momentum: float = 0.9, momentum: float = 0.99, pool: str = "cls",
                 momentum_schedule: str = "cosine"):
        super().__init__()
        _check_choices(pool, momentum_schedule)
        d = backbone.embed_dim
        self.student = backbone
        self.student_head = _init_(nn.Sequential(_mlp([d, hidden, hidden, bottleneck], batch_norm=False)), g)
        # Weight-normalised prototypes with the norm fixed to 1 (DINO's norm_last_layer).
        self.prototypes = nn.utils.parametrizations.weight_norm(_init_(nn.Linear(bottleneck, prototypes, bias=False), g))
        self.prototypes.parametrizations.weight.original0.data.fill_(1.0)
        self.prototypes.parametrizations.weight.original0.requires_grad_(False)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.student_head).requires_grad_(False)
        self.teacher_prototypes = copy.deepcopy(self.prototypes).requires_grad_(False)
        self.register_buffer("center", torch.zeros(prototypes))
        self.teacher_temp, self.student_temp = teacher_temp, student_temp
        self.center_momentum, self.momentum = center_momentum, momentum
        self.pool, self.momentum_schedule = pool, momentum_schedule

    def _head(self, cls: torch.Tensor, head: nn.Module, protos: nn.Module) -> torch.Tensor:
        return protos(F.normalize(head(cls), dim=-1))

    def forward(self, views: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """``views``: two global views, then any local ones (:func:`multi_crop`). The teacher sees
        the global views; each of its outputs is the target of every student view but its own.
        Returns (loss, student patch tokens of the two global views (2B, N, d))."""
        x = torch.cat(views[:2])
        cls, patches = _tokens(self.student, x, self.pool)
        student = list(self._head(cls, self.student_head, self.prototypes).chunk(2))
        for local in views[2:]:
            local_cls, _ = _tokens(self.student, local, self.pool)
            student.append(self._head(local_cls, self.student_head, self.prototypes))
        with torch.no_grad():
            t_cls, _ = _tokens(self.teacher, x, self.pool)
            teacher_logits = self._head(t_cls, self.teacher_head, self.teacher_prototypes)
            teacher = F.softmax((teacher_logits - self.center) / self.teacher_temp, dim=-1).chunk(2)
            self.center.mul_(self.center_momentum).add_(teacher_logits.mean(0), alpha=1 - self.center_momentum)
        terms = [-(t * F.log_softmax(s / self.student_temp, -1)).sum(-1).mean()
                 for i, t in enumerate(teacher) for j, s in enumerate(student) if i != j]
        return sum(terms) / len(terms), patches

    def after_step(self, progress: float) -> None:
        """EMA update of the teacher (momentum by :func:`_momentum`)."""
        m = _momentum(self.momentum, progress, self.momentum_schedule)
        _ema_(self.teacher, self.student, m)
        _ema_(self.teacher_head, self.student_head, m)
        _ema_(self.teacher_prototypes, self.prototypes, m)

    def checkpoint(self, epoch: int, loss: float) -> dict:
        return {"teacher": {f"backbone.{k}": v.clone() for k, v in self.teacher.state_dict().items()},
                "student": {f"module.backbone.{k}": v.clone() for k, v in self.student.state_dict().items()},
                "epoch": epoch, "train_loss": loss}


def _masked_features(backbone: nn.Module, x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    """``backbone.forward_features(x)`` with the patch embeddings where ``mask`` (B, N) is True
    replaced by ``mask_token`` (d,) before the position embedding, as iBOT and BEiT do."""
    tokens = backbone.patch_embed(x)                       # (B, h, w, d) with dynamic_img_size, else (B, N, d)
    tokens = torch.where(mask.view(*tokens.shape[:-1], 1), mask_token.to(tokens.dtype), tokens)
    tokens = backbone.norm_pre(backbone.patch_drop(backbone._pos_embed(tokens)))
    return backbone.norm(backbone.blocks(tokens))


class IBOT(DINO):
    """DINO plus iBOT's masked patch self-distillation (Zhou et al. 2022), scaled down.

    In each global view of half the images (``mask_fraction``), a random ``mask_ratio`` share of
    the patches is replaced by a learned mask token in the student; at those positions the
    student's patch tokens, through the shared head, match the teacher's centred and sharpened
    patch outputs of the unmasked view. The loss is the class-token DINO loss plus
    ``patch_weight`` times the patch loss.
    """

    family = "self-distillation, masked patches"

    def __init__(self, backbone: nn.Module, g: torch.Generator, *, mask_ratio: tuple[float, float] = (0.1, 0.5),
                 mask_fraction: float = 0.5, patch_weight: float = 1.0, **kwargs):
        super().__init__(backbone, g, **kwargs)
        self.mask_token = nn.Parameter(torch.zeros(backbone.embed_dim))
        self.register_buffer("patch_center", torch.zeros_like(self.center))
        self.mask_ratio, self.mask_fraction, self.patch_weight = mask_ratio, mask_fraction, patch_weight
        self._generator = g

    def _mask(self, batch: int, tokens: int) -> torch.Tensor:
        g = self._generator
        ratio = self.mask_ratio[0] + (self.mask_ratio[1] - self.mask_ratio[0]) * torch.rand(batch, 1, generator=g)
        masked = torch.rand(batch, tokens, generator=g) < ratio
        return masked & (torch.rand(batch, 1, generator=g) < self.mask_fraction)

    def forward(self, views: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (DINO loss + patch loss, student patch tokens of the two masked global views (2B, N, d))."""
        x = torch.cat(views[:2])
        n = self.student.patch_embed.num_patches
        mask = self._mask(x.shape[0], n)
        out = _masked_features(self.student, x, mask, self.mask_token)
        cls, patches = (out[:, 0] if self.pool == "cls" else out[:, self.student.num_prefix_tokens:].mean(1)), \
            out[:, self.student.num_prefix_tokens:]
        student = list(self._head(cls, self.student_head, self.prototypes).chunk(2))
        for local in views[2:]:
            local_cls, _ = _tokens(self.student, local, self.pool)
            student.append(self._head(local_cls, self.student_head, self.prototypes))
        student_patches = self._head(patches, self.student_head, self.prototypes)        # (2B, N, K)
        with torch.no_grad():
            t_out = self.teacher.forward_features(x)
            t_cls = t_out[:, 0] if self.pool == "cls" else t_out[:, self.teacher.num_prefix_tokens:].mean(1)
            teacher_logits = self._head(t_cls, self.teacher_head, self.teacher_prototypes)
            teacher = F.softmax((teacher_logits - self.center) / self.teacher_temp, dim=-1).chunk(2)
            self.center.mul_(self.center_momentum).add_(teacher_logits.mean(0), alpha=1 - self.center_momentum)
            t_patch_logits = self._head(t_out[:, self.teacher.num_prefix_tokens:], self.teacher_head,
                                        self.teacher_prototypes)
            t_patches = F.softmax((t_patch_logits - self.patch_center) / self.teacher_temp, dim=-1)
            self.patch_center.mul_(self.center_momentum).add_(t_patch_logits.mean((0, 1)),
                                                              alpha=1 - self.center_momentum)
        terms = [-(t * F.log_softmax(s / self.student_temp, -1)).sum(-1).mean()
                 for i, t in enumerate(teacher) for j, s in enumerate(student) if i != j]
        loss = sum(terms) / len(terms)
        if bool(mask.any()):
            ce = -(t_patches * F.log_softmax(student_patches / self.student_temp, -1)).sum(-1)   # (2B, N)
            loss = loss + self.patch_weight * (ce * mask).sum() / mask.sum()
        return loss, patches


class MoCoV3(nn.Module):
    """MoCo v3-style contrastive learning: projector + predictor, momentum encoder, InfoNCE."""

    family = "contrastive"

    def __init__(self, backbone: nn.Module, g: torch.Generator, *, dim: int = 128, hidden: int = 256,
                 temperature: float = 0.2, momentum: float = 0.99, pool: str = "cls",
                 momentum_schedule: str = "cosine"):
        super().__init__()
        _check_choices(pool, momentum_schedule)
        d = backbone.embed_dim
        self.base_encoder = backbone
        self.projector = _init_(_mlp([d, hidden, hidden, dim], batch_norm=True, last_bn=True), g)
        self.predictor = _init_(_mlp([dim, hidden, dim], batch_norm=True), g)
        self.momentum_encoder = copy.deepcopy(backbone).requires_grad_(False)
        self.momentum_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.temperature, self.momentum = temperature, momentum
        self.pool, self.momentum_schedule = pool, momentum_schedule

    def _contrast(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        logits = q @ k.T / self.temperature
        return F.cross_entropy(logits, torch.arange(q.shape[0])) * 2 * self.temperature

    def forward(self, views: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat(views)
        cls, patches = _tokens(self.base_encoder, x, self.pool)
        q1, q2 = self.predictor(self.projector(cls)).chunk(2)
        with torch.no_grad():
            k_cls, _ = _tokens(self.momentum_encoder, x, self.pool)
            k1, k2 = self.momentum_projector(k_cls).chunk(2)
        return self._contrast(q1, k2) + self._contrast(q2, k1), patches

    def after_step(self, progress: float) -> None:
        m = _momentum(self.momentum, progress, self.momentum_schedule)
        _ema_(self.momentum_encoder, self.base_encoder, m)
        _ema_(self.momentum_projector, self.projector, m)

    def checkpoint(self, epoch: int, loss: float) -> dict:
        base = {f"module.base_encoder.{k}": v.clone() for k, v in self.base_encoder.state_dict().items()}
        mom = {f"module.momentum_encoder.{k}": v.clone() for k, v in self.momentum_encoder.state_dict().items()}
        return {"state_dict": {**base, **mom}, "epoch": epoch, "train_loss": loss}


METHODS: dict[str, type] = {"dino": DINO, "ibot": IBOT, "mocov3": MoCoV3}


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.04
    warmup_epochs: int = 2
    schedule: str = "cosine"       # after the warm-up: "cosine" (LR to 0, EMA momentum to 1) or "constant" (both kept)
    pool: str = "cls"              # the image embedding the objective sees: "cls" token or "mean" of patch tokens
    local_crops: int = 0           # DINO's multi-crop: local views per image besides the two global ones
    save_every: int = 3
    dse_weight: float = 0.0        # β of loss − β·DSE on the student's patch tokens (0: off)
    seed: int = 0


def train(method: str, images: torch.Tensor, out_dir: str | Path, config: TrainConfig,
          vit: ViTConfig = ViTConfig(), progress: bool = True,
          on_epoch: Callable[[int, float], None] | None = None) -> list[Path]:
    """Pre-trains a ViT with ``method`` on uint8 ``images`` (n, 3, S, S); returns the checkpoints.

    Checkpoints ``checkpoint{epoch:04d}.pth`` are written at epoch 0 (the initialisation) and
    every ``save_every`` epochs, and at the last epoch; each stores the mean training loss of
    that epoch (``train_loss``; NaN at epoch 0). AdamW with a linear warm-up, then ``config.schedule``;
    every random draw (init, batches, augmentations) comes from generators seeded by ``seed``.
    """
    from .. import DSERegularizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):  # layer constructors draw from the global RNG: keep it as it was
        model = METHODS[method](make_vit(vit, g), g, pool=config.pool, momentum_schedule=config.schedule)
    regularizer = DSERegularizer(weight=config.dse_weight, global_clusters=16, group_size=8) \
        if config.dse_weight > 0 else None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    n = images.shape[0]
    steps_per_epoch = max(1, n // config.batch_size)
    total = config.epochs * steps_per_epoch
    saved = [out_dir / "checkpoint0000.pth"]
    torch.save(model.checkpoint(0, float("nan")), saved[0])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"{out_dir.name}", unit="step", file=sys.stderr, leave=False)
    step = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=g)
        losses = []
        for b in range(steps_per_epoch):
            lr = config.lr * min(1.0, (step + 1) / max(1, config.warmup_epochs * steps_per_epoch))
            if config.schedule == "cosine" and step >= config.warmup_epochs * steps_per_epoch:
                lr *= 0.5 * (1 + math.cos(math.pi * step / total))
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = images[order[b * config.batch_size:(b + 1) * config.batch_size]]
            loss, patches = model(multi_crop(batch, g, config.local_crops) if config.local_crops else
                                  two_views(batch, g))
            total_loss = loss + regularizer(patches) if regularizer is not None else loss
            optimizer.zero_grad(set_to_none=True)
            total_loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 3.0)
            optimizer.step()
            step += 1
            model.after_step(step / total)
            losses.append(loss.item())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.3f}")
        mean_loss = sum(losses) / len(losses)
        if on_epoch is not None:
            on_epoch(epoch, mean_loss)
        if epoch % config.save_every == 0 or epoch == config.epochs:
            path = out_dir / f"checkpoint{epoch:04d}.pth"
            torch.save(model.checkpoint(epoch, mean_loss), path)
            saved.append(path)
    if bar is not None:
        bar.close()
    return saved
