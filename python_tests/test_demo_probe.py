"""The demo's dense probe: patch majority labels, mIoU from a confusion matrix, and the linear
probe on frozen patch tokens."""

from __future__ import annotations

import math

import pytest
import torch

from dse_ext.demo.probe import linear_probe, miou, patch_labels

SIZE, PATCH, CLASSES = 32, 8, 5
H = SIZE // PATCH


def quadrant_masks(n: int, g: torch.Generator) -> torch.Tensor:
    """int64 (n, SIZE, SIZE): each image's four quadrants hold four distinct random classes."""
    classes = torch.stack([torch.randperm(CLASSES, generator=g)[:4] for _ in range(n)]).reshape(n, 2, 2)
    return classes.repeat_interleave(SIZE // 2, dim=1).repeat_interleave(SIZE // 2, dim=2)


def separable_tokens(masks: torch.Tensor, g: torch.Generator, d: int = 16, noise: float = 0.1) -> torch.Tensor:
    """(n, H·H, d): one-hot of each patch's label (row-major patch order) plus Gaussian noise."""
    labels = patch_labels(masks, PATCH).reshape(masks.shape[0], -1)
    tokens = torch.nn.functional.one_hot(labels, d).float()
    return tokens + noise * torch.randn(tokens.shape, generator=g)


@pytest.fixture
def task(gen):
    train_masks, val_masks = quadrant_masks(60, gen), quadrant_masks(30, gen)
    return separable_tokens(train_masks, gen), train_masks, separable_tokens(val_masks, gen), val_masks


# ------------------------------------------------------------------ patch_labels
def test_patch_labels_majority_and_ties():
    mask = torch.tensor([[[1, 1, 0, 2],
                          [1, 0, 2, 0],
                          [3, 3, 4, 4],
                          [0, 0, 2, 2]]])
    # cells: [1,1,1,0] → 1; [0,2,2,0] → tie 0/2 → 0; [3,3,0,0] → tie → 0; [4,4,2,2] → tie → 2
    assert patch_labels(mask, 2).tolist() == [[[1, 0], [0, 2]]]
    assert patch_labels(mask, 1).tolist() == mask.tolist()
    assert patch_labels(mask, 4).tolist() == [[[0]]]  # 0: 5, 2: 4, 1: 3, ...
    assert patch_labels(mask, 2).dtype == torch.int64


def test_patch_labels_row_major_over_a_batch():
    masks = torch.zeros(2, 4, 4, dtype=torch.int64)
    masks[0, :2, 2:] = 3   # top-right cell of image 0
    masks[1, 2:, :2] = 1   # bottom-left cell of image 1
    out = patch_labels(masks, 2)
    assert out.tolist() == [[[0, 3], [0, 0]], [[0, 0], [1, 0]]]
    assert out.reshape(2, -1).tolist() == [[0, 3, 0, 0], [0, 0, 1, 0]]


def test_patch_labels_errors():
    with pytest.raises(ValueError, match="divide"):
        patch_labels(torch.zeros(1, 6, 6, dtype=torch.int64), 4)
    with pytest.raises(ValueError, match=r"\(n, S, S\)"):
        patch_labels(torch.zeros(6, 6, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match=">= 0"):
        patch_labels(-torch.ones(1, 4, 4, dtype=torch.int64), 2)


# ------------------------------------------------------------------ miou
def test_miou_perfect():
    target = torch.tensor([[0, 1], [2, 2]])
    out = miou(target, target, 3)
    assert out["miou"] == 1.0 and out["pixel_accuracy"] == 1.0 and out["iou"] == [1.0, 1.0, 1.0]


def test_miou_known_confusion():
    target = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 1, 1, 2, 2])
    # class 0: TP 2, FP 0, FN 1 → 2/3; class 1: TP 1, FP 1, FN 1 → 1/3; class 2: TP 1, FP 1, FN 0 → 1/2
    out = miou(pred, target, 3)
    assert out["iou"] == pytest.approx([2 / 3, 1 / 3, 1 / 2])
    assert out["miou"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
    assert out["pixel_accuracy"] == pytest.approx(4 / 6)


def test_miou_accumulates_over_the_set_not_per_image():
    target = torch.tensor([[0, 0, 0, 1], [1, 1, 1, 1]])
    pred = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]])
    # pooled: class 0 TP 3 / (3 + 1) = 0.75, class 1 TP 4 / 5 = 0.8
    out = miou(pred, target, 2)
    assert out["iou"] == pytest.approx([0.75, 0.8])
    assert out["miou"] == pytest.approx(0.775)


def test_miou_absent_class_is_nan_and_excluded():
    target = torch.tensor([0, 0, 2, 2])
    pred = torch.tensor([0, 2, 2, 2])
    out = miou(pred, target, 4)
    assert math.isnan(out["iou"][1]) and math.isnan(out["iou"][3])
    assert out["iou"][0] == pytest.approx(1 / 2) and out["iou"][2] == pytest.approx(2 / 3)
    assert out["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_miou_errors():
    with pytest.raises(ValueError, match="shape"):
        miou(torch.zeros(3, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="outside"):
        miou(torch.tensor([0, 2]), torch.tensor([0, 1]), 2)


# ------------------------------------------------------------------ linear_probe
def test_probe_on_separable_tokens(task):
    train_tokens, train_masks, val_tokens, val_masks = task
    out = linear_probe(train_tokens, train_masks, val_tokens, val_masks, CLASSES, epochs=60)
    assert out["miou"] > 0.9 and out["train_miou"] > 0.9 and out["pixel_accuracy"] > 0.9
    assert len(out["iou"]) == CLASSES


def test_probe_on_random_tokens_is_much_worse(task, gen):
    _, train_masks, _, val_masks = task
    train_tokens, val_tokens = torch.randn(60, H * H, 16, generator=gen), torch.randn(30, H * H, 16, generator=gen)
    out = linear_probe(train_tokens, train_masks, val_tokens, val_masks, CLASSES, epochs=60)
    assert out["miou"] < 0.5


def test_probe_patch_order_is_row_major(task):
    """Tokens laid out column-major no longer match the masks."""
    train_tokens, train_masks, val_tokens, val_masks = task
    transposed = val_tokens.reshape(-1, H, H, val_tokens.shape[-1]).transpose(1, 2).reshape(val_tokens.shape)
    good = linear_probe(train_tokens, train_masks, val_tokens, val_masks, CLASSES, epochs=60)
    bad = linear_probe(train_tokens, train_masks, transposed, val_masks, CLASSES, epochs=60)
    assert bad["miou"] < good["miou"] - 0.2


def test_probe_is_deterministic_and_leaves_the_global_rng_alone(task):
    state = torch.get_rng_state()
    a = linear_probe(*task, CLASSES, epochs=20, seed=3)
    torch.manual_seed(123)
    b = linear_probe(*task, CLASSES, epochs=20, seed=3)
    assert a == b
    torch.set_rng_state(state)
    linear_probe(*task, CLASSES, epochs=5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)


def test_probe_shape_errors(task):
    train_tokens, train_masks, val_tokens, val_masks = task
    with pytest.raises(ValueError, match="number of images"):
        linear_probe(train_tokens[:-1], train_masks, val_tokens, val_masks, CLASSES)
    with pytest.raises(ValueError, match="square"):
        linear_probe(train_tokens[:, :12], train_masks, val_tokens[:, :12], val_masks, CLASSES)
    with pytest.raises(ValueError, match="does not divide"):  # 3 × 3 grid on 32 × 32 masks
        linear_probe(train_tokens[:, :9], train_masks, val_tokens[:, :9], val_masks, CLASSES)
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        linear_probe(train_tokens, train_masks, val_tokens[..., :8], val_masks, CLASSES)
    with pytest.raises(ValueError, match=r"\(n, N, d\)"):
        linear_probe(train_tokens[0], train_masks, val_tokens, val_masks, CLASSES)
    with pytest.raises(ValueError, match=r"\(n, S, S\)"):
        linear_probe(train_tokens, train_masks[:, :, :16], val_tokens, val_masks, CLASSES)
    with pytest.raises(ValueError, match="outside"):
        linear_probe(train_tokens, train_masks, val_tokens, val_masks, CLASSES - 1)


def test_probe_accepts_inference_mode_tokens(task):
    """Tokens extracted under torch.inference_mode() (as a frozen backbone's are) train the probe."""
    train_tokens, train_masks, val_tokens, val_masks = task
    with torch.inference_mode():
        frozen_train, frozen_val = train_tokens.clone(), val_tokens.clone()
    expected = linear_probe(train_tokens, train_masks, val_tokens, val_masks, CLASSES, epochs=10)
    assert linear_probe(frozen_train, train_masks, frozen_val, val_masks, CLASSES, epochs=10) == expected
