"""The dense ground truth: a linear probe on frozen patch tokens, scored by pixel-level mIoU.

:func:`linear_probe` trains one linear layer (token → class logits) on the majority label of each
patch of the train masks and evaluates it at pixel level on the val masks: the patch logits are
upsampled bilinearly to the image size and the argmax is compared with every pixel's label.
:func:`miou` accumulates one confusion matrix over the whole set (not a mean over images).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["patch_labels", "confusion_matrix", "miou", "linear_probe"]


def patch_labels(masks: torch.Tensor, patch: int) -> torch.Tensor:
    """Majority label of every ``patch`` × ``patch`` cell: masks int ``(n, S, S)`` → int64 ``(n, S/patch, S/patch)``.

    Cells are in row-major order like a ViT's patch tokens; a tie goes to the lowest label.
    """
    if masks.dim() != 3 or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"masks must be (n, S, S), got {tuple(masks.shape)}")
    if masks.is_floating_point() or masks.is_complex() or masks.dtype == torch.bool:
        raise ValueError(f"masks must hold integer labels, got {masks.dtype}")
    n, size = masks.shape[0], masks.shape[1]
    if patch < 1 or size % patch:
        raise ValueError(f"patch size {patch} does not divide the mask size {size}")
    h = size // patch
    if masks.numel() == 0:
        return torch.zeros(n, h, h, dtype=torch.int64, device=masks.device)
    labels = masks.long()
    if int(labels.min()) < 0:
        raise ValueError("masks must hold labels >= 0")
    num_labels = int(labels.max()) + 1
    cell = torch.arange(n * h * h, device=labels.device).reshape(n, h, 1, h, 1).expand(n, h, patch, h, patch)
    counts = torch.bincount((cell.reshape(-1) * num_labels + labels.reshape(-1)), minlength=n * h * h * num_labels)
    return counts.reshape(n, h, h, num_labels).argmax(dim=-1)  # argmax returns the first maximum


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 ``(num_classes, num_classes)``: entry [t, p] counts elements with target t predicted as p."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    for name, t in (("pred", pred), ("target", target)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"{name} holds labels outside 0..{num_classes - 1}")
    flat = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).cpu()


def _scores(confusion: torch.Tensor) -> dict:
    """``miou``, ``iou`` (list, NaN where a class's union is 0) and ``pixel_accuracy`` of a confusion matrix."""
    confusion = confusion.double()
    tp = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
    present = union > 0
    total = float(confusion.sum())
    return {
        "miou": float(iou[present].mean()) if bool(present.any()) else math.nan,
        "iou": iou.tolist(),
        "pixel_accuracy": float(tp.sum()) / total if total else math.nan,
    }


def miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict:
    """IoU scores of integer label maps ``pred`` and ``target`` of the same shape, over all their elements.

    Returns ``{"miou": float, "iou": list[float], "pixel_accuracy": float}``: ``iou[c]`` is
    TP / (TP + FP + FN) of class c over the whole set, NaN where class c is neither predicted nor
    present; ``miou`` is the mean over the classes with a non-empty union (background included);
    ``pixel_accuracy`` the fraction of elements predicted right.
    """
    return _scores(confusion_matrix(pred, target, num_classes))


def _grid_side(num_tokens: int, size: int) -> int:
    """h = w = √N for N row-major patch tokens on an S × S image; ValueError unless h is whole and divides S."""
    h = math.isqrt(num_tokens)
    if num_tokens < 1 or h * h != num_tokens:
        raise ValueError(f"the number of patch tokens must be a square h·h, got {num_tokens}")
    if size % h:
        raise ValueError(f"a {h} × {h} token grid does not divide the {size} × {size} masks")
    return h


def _check_inputs(train_tokens, train_masks, val_tokens, val_masks, num_classes) -> tuple[int, int]:
    """Validate shapes; returns (h, patch)."""
    for name, t in (("train_tokens", train_tokens), ("val_tokens", val_tokens)):
        if t.dim() != 3:
            raise ValueError(f"{name} must be (n, N, d), got {tuple(t.shape)}")
    for name, t in (("train_masks", train_masks), ("val_masks", val_masks)):
        if t.dim() != 3 or t.shape[1] != t.shape[2]:
            raise ValueError(f"{name} must be (n, S, S), got {tuple(t.shape)}")
    if train_tokens.shape[0] != train_masks.shape[0] or val_tokens.shape[0] != val_masks.shape[0]:
        raise ValueError(f"tokens and masks differ in the number of images: train {train_tokens.shape[0]} vs "
                         f"{train_masks.shape[0]}, val {val_tokens.shape[0]} vs {val_masks.shape[0]}")
    if train_tokens.shape[0] == 0 or val_tokens.shape[0] == 0:
        raise ValueError("the train and val sets must not be empty")
    if train_tokens.shape[1:] != val_tokens.shape[1:]:
        raise ValueError(f"train and val tokens differ in (N, d): {tuple(train_tokens.shape[1:])} vs "
                         f"{tuple(val_tokens.shape[1:])}")
    if train_masks.shape[1:] != val_masks.shape[1:]:
        raise ValueError(f"train and val masks differ in size: {tuple(train_masks.shape[1:])} vs "
                         f"{tuple(val_masks.shape[1:])}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    for name, t in (("train_masks", train_masks), ("val_masks", val_masks)):
        if int(t.min()) < 0 or int(t.max()) >= num_classes:
            raise ValueError(f"{name} holds labels outside 0..{num_classes - 1}")
    size = train_masks.shape[-1]
    h = _grid_side(train_tokens.shape[1], size)
    return h, size // h


def _pixel_predictions(weight: torch.Tensor, bias: torch.Tensor, tokens: torch.Tensor, h: int, size: int,
                       batch: int = 256) -> torch.Tensor:
    """Pixel labels int64 ``(n, S, S)`` of standardised tokens ``(n, h·h, d)`` under weight ``(C, d)``, bias ``(C,)``.

    The logits, as ``(n, C, h, h)``, are upsampled bilinearly to ``(S, S)`` (align_corners=False), then argmax.
    """
    out = []
    with torch.no_grad():
        for i in range(0, tokens.shape[0], batch):
            logits = F.linear(tokens[i:i + batch], weight, bias)                 # (b, N, C)
            logits = logits.transpose(1, 2).reshape(logits.shape[0], -1, h, h)   # (b, C, h, w)
            logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
            out.append(logits.argmax(dim=1))
    return torch.cat(out)


def linear_probe(train_tokens: torch.Tensor, train_masks: torch.Tensor, val_tokens: torch.Tensor,
                 val_masks: torch.Tensor, num_classes: int, *, epochs: int = 100, lr: float = 0.05,
                 weight_decay: float = 1e-4, balanced: bool = True, seed: int = 0) -> dict:
    """Train a linear classifier on frozen patch tokens and score it by pixel-level mIoU.

    train_tokens: float ``(n, N, d)``, N = h·w patch tokens in row-major patch order (h = w = √N);
    train_masks: int ``(n, S, S)`` with labels 0..num_classes − 1 (h must divide S; patch = S/h px);
    val_tokens ``(m, N, d)``, val_masks ``(m, S, S)``; num_classes counts the background.

    Features are standardised with the mean and std of the train tokens (per dimension). A linear
    layer d → num_classes (initialised from a private generator seeded with ``seed``) is trained
    on every train token with the majority label of its patch (:func:`patch_labels`), full batch,
    for ``epochs`` steps of AdamW (``lr``, ``weight_decay``) on the mean cross-entropy, each class
    weighted by the inverse of its share of the train patches when ``balanced`` (as scikit-learn's
    ``class_weight="balanced"``: background covers most patches, and an unweighted probe settles on
    predicting it everywhere). Prediction
    is at pixel level: the logits, as ``(m, C, h, w)``, are upsampled bilinearly to ``(S, S)``
    (``align_corners=False``) and the argmax is compared with every pixel of the masks.

    Returns ``{"miou", "iou", "pixel_accuracy", "train_miou"}``: the val scores of :func:`miou`
    and the train set's pixel-level mIoU. Deterministic for a given seed on a given machine; the
    global RNG is not used.
    """
    h, patch = _check_inputs(train_tokens, train_masks, val_tokens, val_masks, num_classes)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    size, d = train_masks.shape[-1], train_tokens.shape[-1]
    x = train_tokens.detach().float().reshape(-1, d)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    x = (x - mean) / std
    y = patch_labels(train_masks.to(x.device), patch).reshape(-1)

    g = torch.Generator().manual_seed(seed)  # nn.Linear would draw its init from the global RNG
    weight = (torch.randn(num_classes, d, generator=g) * (0.01 / math.sqrt(d))).to(x.device).requires_grad_()
    bias = torch.zeros(num_classes, device=x.device, requires_grad=True)
    class_weight = None
    if balanced:
        counts = torch.bincount(y, minlength=num_classes).float()
        class_weight = torch.where(counts > 0, y.numel() / (num_classes * counts.clamp(min=1)), 0.0)
    optimizer = torch.optim.AdamW([weight, bias], lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(F.linear(x, weight, bias), y, weight=class_weight).backward()
        optimizer.step()
    weight, bias = weight.detach(), bias.detach()

    val_x = (val_tokens.detach().float().to(x.device) - mean) / std
    val_pred = _pixel_predictions(weight, bias, val_x, h, size)
    result = miou(val_pred, val_masks.to(val_pred.device), num_classes)
    train_pred = _pixel_predictions(weight, bias, x.reshape(train_tokens.shape[0], -1, d), h, size)
    result["train_miou"] = miou(train_pred, train_masks.to(train_pred.device), num_classes)["miou"]
    return result
