"""The demo's synthetic dense dataset: shapes, determinism, masks that follow the painting, and
colour that does not give the class away."""

from __future__ import annotations

import pytest
import torch

from dse_ext.demo.data import CLASS_SPECS, DenseDataset, make_dataset, render_scene, save_examples

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def data() -> DenseDataset:
    return make_dataset(200, 200, size=64, num_classes=NUM_CLASSES, seed=0)


def regions(images: torch.Tensor, masks: torch.Tensor, min_pixels: int = 20):
    """(image index, class, pixel colours float (3, P)) of every class region of every image."""
    out = []
    for i, (image, mask) in enumerate(zip(images.float(), masks)):
        for c in range(1, int(mask.max()) + 1):
            where = mask == c
            if int(where.sum()) >= min_pixels:
                out.append((i, c, image[:, where]))
    return out


def test_shapes_dtypes_and_ranges(data):
    assert data.train_images.shape == (200, 3, 64, 64) and data.train_images.dtype == torch.uint8
    assert data.val_images.shape == (200, 3, 64, 64) and data.val_images.dtype == torch.uint8
    assert data.train_masks.shape == (200, 64, 64) and data.train_masks.dtype == torch.int64
    assert data.val_masks.shape == (200, 64, 64) and data.val_masks.dtype == torch.int64
    for masks in (data.train_masks, data.val_masks):
        assert int(masks.min()) == 0 and int(masks.max()) == NUM_CLASSES
    assert data.num_classes == NUM_CLASSES + 1
    assert data.class_names[0] == "background" and len(data.class_names) == NUM_CLASSES + 1
    assert data.seed == 0
    # images use the intensity range, not a constant
    assert data.val_images.float().std() > 30


def test_render_scene_shapes_and_other_sizes():
    image, mask = render_scene(torch.Generator().manual_seed(3), 32, 8)
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert mask.shape == (32, 32) and mask.dtype == torch.int64
    assert 0 <= int(mask.min()) and int(mask.max()) <= 8
    small = make_dataset(4, 2, size=48, num_classes=len(CLASS_SPECS), seed=1)
    assert small.train_images.shape == (4, 3, 48, 48) and small.num_classes == len(CLASS_SPECS) + 1


def test_same_seed_same_tensors_and_streams_are_separate():
    a, b = make_dataset(12, 6, seed=7), make_dataset(12, 6, seed=7)
    for name in ("train_images", "train_masks", "val_images", "val_masks"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    c = make_dataset(12, 6, seed=8)
    assert not torch.equal(a.train_images, c.train_images)
    assert not torch.equal(a.val_masks, c.val_masks)
    assert not torch.equal(a.train_images[:6], a.val_images)
    # the train split does not depend on the val size (separate generators)
    d = make_dataset(12, 2, seed=7)
    assert torch.equal(a.train_images, d.train_images) and torch.equal(a.val_images[:2], d.val_images)


def test_render_scene_uses_only_its_generator():
    state = torch.get_rng_state()
    first = render_scene(torch.Generator().manual_seed(5), 64, NUM_CLASSES)
    torch.manual_seed(999)  # the global RNG must not matter
    second = render_scene(torch.Generator().manual_seed(5), 64, NUM_CLASSES)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    torch.set_rng_state(state)
    make_dataset(3, 2, seed=0)
    assert torch.equal(torch.get_rng_state(), state)


def test_every_class_appears_and_background_fraction_is_plausible(data):
    for masks in (data.train_masks, data.val_masks):
        present = torch.stack([(masks == c).flatten(1).any(1) for c in range(NUM_CLASSES + 1)])  # (C+1, n)
        assert bool(present[0].all())                          # background in every image
        assert bool(present[1:].any(0).all())                  # at least one object in every image
        per_class = present[1:].sum(1)                         # images containing each class
        assert int(per_class.min()) >= 30, per_class.tolist()
        objects_per_image = present[1:].sum(0)
        assert int(objects_per_image.max()) <= 3
        background = float((masks == 0).float().mean())
        assert 0.6 < background < 0.95


def test_masks_follow_the_painting(data):
    """Inside one class region the pixels take one or two colours (plus the per-pixel noise).

    Two-colour objects differ by 0.35–0.65 of the range in every channel, so splitting the red
    channel at its mid-range separates the colours; the spread left is the noise (≈ 7.7 / 255) for
    almost every region, and much larger for the cluttered background.
    """
    def residual_spread(pixels: torch.Tensor) -> float:
        red = pixels[0]
        cut = (red.min() + red.max()) / 2
        parts = [pixels[:, red <= cut], pixels[:, red > cut]]
        return max(float(p.std(dim=1).max()) for p in parts if p.shape[1] > 5)

    spreads = {c: [] for c in range(1, NUM_CLASSES + 1)}
    for _, c, pixels in regions(data.val_images, data.val_masks, min_pixels=30):
        spreads[c].append(residual_spread(pixels))
    for c, values in spreads.items():
        assert float(torch.tensor(values).median()) < 12, (c, values[:10])
    background = [residual_spread(image.float()[:, mask == 0]) for image, mask in zip(data.val_images, data.val_masks)]
    assert float(torch.tensor(background).median()) > 20


def test_colour_does_not_identify_the_class(data):
    """Per-object mean colours: every class spans a wide range, the class means are close, and a
    nearest-class-mean classifier (fit on train, scored on val) is near chance (0.2)."""
    def mean_colours(images, masks):
        rs = regions(images, masks)
        return torch.stack([p.mean(1) for _, _, p in rs]), torch.tensor([c for _, c, _ in rs])

    colours, labels = mean_colours(data.train_images, data.train_masks)
    class_means = torch.stack([colours[labels == c].mean(0) for c in range(1, NUM_CLASSES + 1)])
    class_stds = torch.stack([colours[labels == c].std(0) for c in range(1, NUM_CLASSES + 1)])
    assert float(class_stds.min()) > 25                        # in 0..255 units, per channel
    spread = float(class_stds.mean())
    assert float(torch.cdist(class_means, class_means).max()) < 0.5 * spread
    val_colours, val_labels = mean_colours(data.val_images, data.val_masks)
    predicted = torch.cdist(val_colours, class_means).argmin(1) + 1
    accuracy = float((predicted == val_labels).float().mean())
    assert accuracy < 0.5, accuracy


def _nearest_mean_accuracy(train: DenseDataset, val: DenseDataset) -> float:
    """Accuracy of a nearest-class-mean classifier on per-object mean colours (fit on train, scored on val)."""
    def mean_colours(images, masks):
        rs = regions(images, masks)
        return torch.stack([p.mean(1) for _, _, p in rs]), torch.tensor([c for _, c, _ in rs])

    colours, labels = mean_colours(train.train_images, train.train_masks)
    class_means = torch.stack([colours[labels == c].mean(0) for c in range(1, NUM_CLASSES + 1)])
    val_colours, val_labels = mean_colours(val.val_images, val.val_masks)
    return float(((torch.cdist(val_colours, class_means).argmin(1) + 1) == val_labels).float().mean())


def test_class_colour_makes_colour_a_class_cue_and_changes_nothing_else(data):
    tinted = make_dataset(200, 200, size=64, num_classes=NUM_CLASSES, class_colour=0.5, seed=0)
    # the same scenes: same masks, same background pixels; only the objects' colours move
    assert torch.equal(tinted.train_masks, data.train_masks) and torch.equal(tinted.val_masks, data.val_masks)
    background = (data.train_masks == 0).unsqueeze(1).expand_as(data.train_images)
    assert torch.equal(tinted.train_images[background], data.train_images[background])
    assert not torch.equal(tinted.train_images, data.train_images)
    # 0 is the default exactly; colour now gives the class away (chance is 0.2)
    assert torch.equal(make_dataset(20, 5, seed=0, class_colour=0.0).train_images, make_dataset(20, 5, seed=0).train_images)
    assert _nearest_mean_accuracy(data, data) < 0.5
    assert _nearest_mean_accuracy(tinted, tinted) > 0.8
    for bad in (-0.1, 1.5, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="class_colour"):
            make_dataset(2, 2, class_colour=bad)


def test_colour_pairs_share_a_shape_and_differ_only_in_colour():
    paired = make_dataset(60, 0, num_classes=6, class_colour=0.7, colour_pairs=True, seed=0)
    assert paired.class_names[1:3] == (f"{CLASS_SPECS[0][0]}/warm", f"{CLASS_SPECS[0][0]}/cool")
    assert paired.num_classes == 7 and len(paired.class_names) == 7
    # the same draws as the unpaired scenes: only the objects differ (shapes and colours), every
    # pixel that neither paints is the same
    plain = make_dataset(60, 0, num_classes=6, seed=0)
    untouched = ((paired.train_masks == 0) & (plain.train_masks == 0)).unsqueeze(1).expand_as(plain.train_images)
    assert torch.equal(paired.train_images[untouched], plain.train_images[untouched])
    assert not torch.equal(paired.train_masks, plain.train_masks)
    # warm classes (odd labels) are red over blue, cool ones (even) blue over red: that is the
    # whole difference within a pair
    rs = regions(paired.train_images, paired.train_masks)
    assert {c for _, c, _ in rs} == set(range(1, 7))
    warm_right = [float(p[0].mean() - p[2].mean()) > 0 for _, c, p in rs if c % 2 == 1]
    cool_right = [float(p[2].mean() - p[0].mean()) > 0 for _, c, p in rs if c % 2 == 0]
    assert min(len(warm_right), len(cool_right)) > 10
    assert all(warm_right) and all(cool_right)
    with pytest.raises(ValueError, match="class_colour > 0"):
        make_dataset(2, 2, num_classes=6, colour_pairs=True)
    for bad in (5, 0, 18):
        with pytest.raises(ValueError, match="even number"):
            make_dataset(2, 2, num_classes=bad, class_colour=0.7, colour_pairs=True)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        make_dataset(2, 2, num_classes=len(CLASS_SPECS) + 1)
    with pytest.raises(ValueError, match="num_classes"):
        make_dataset(2, 2, num_classes=0)
    with pytest.raises(ValueError, match="size"):
        make_dataset(2, 2, size=8)
    with pytest.raises(ValueError, match="num_train"):
        make_dataset(-1, 2)


def test_save_examples_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    small = make_dataset(4, 1, seed=2)
    path = tmp_path / "examples.png"
    save_examples(small, path, count=8)  # more than available: uses the 4 there are
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
