"""Synthetic dense scenes: textured objects on cluttered backgrounds, with segmentation masks.

Each scene is a low-contrast textured background (two sinusoidal gratings and smooth noise in
random colours) with a few distractors (thin lines and irregular blobs, labelled background),
then 1–3 objects painted in order, later ones on top; the mask follows the painting order. An
object's class is its shape AND its texture together:

=====  =========  =====================================
class  shape      texture (second colour, random phase)
=====  =========  =====================================
1      disc       horizontal stripes, period 4–7 px
2      square     checkerboard, cells 3–5 px
3      triangle   dots on a lattice, spacing 5–7 px
4      cross      solid (one colour)
5      ring       vertical stripes, period 3–5 px
6      diamond    diagonal stripes, period 4–7 px
7      bar        grid lines, spacing 4–6 px
8      half-disc  concentric circles, period 3–5 px
=====  =========  =====================================

``num_classes`` object classes use the first rows of this table (at most 8). An object's first
colour is uniform in RGB and its second colour is the first shifted by 0.35–0.65 per channel
(mod 1), whatever the class. With ``class_colour = 0`` (the default) colour carries no class
information; with ``class_colour = t > 0`` both colours are blended towards the class's own colour
(:data:`CLASS_COLOURS`), ``(1 − t)·colour + t·class colour``, so colour becomes a class cue as in
natural images (grass is green) — one that colour augmentations teach an encoder to discard.

With ``colour_pairs=True`` the classes come in pairs that share a shape and texture and differ
only in colour: classes 2i − 1 and 2i are row i of the table, blended (by ``class_colour > 0``)
towards a warm and a cool colour (:data:`PAIR_COLOURS`) respectively, so telling the two apart
takes the absolute hue that the augmentations' hue rotation teaches an encoder to ignore.
``num_classes`` then counts the paired classes (an even number, at most 16). Objects are 14–32 px across,
rotated by up to ±15°, with the centre anywhere at least a third of the radius inside the image
(so objects may be cut by the border and overlap each other).

All randomness comes from a private :class:`torch.Generator`; the global RNG is never used.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["DenseDataset", "CLASS_SPECS", "CLASS_COLOURS", "PAIR_COLOURS", "make_dataset", "render_scene", "colour_masks", "save_examples"]

# (name, shape, texture, texture period range in px) per object class, in label order 1, 2, ...
CLASS_SPECS: tuple[tuple[str, str, str, tuple[float, float]], ...] = (
    ("disc/h-stripes", "disc", "h_stripes", (4.0, 7.0)),
    ("square/checker", "square", "checker", (3.0, 5.0)),
    ("triangle/dots", "triangle", "dots", (5.0, 7.0)),
    ("cross/solid", "cross", "solid", (1.0, 1.0)),
    ("ring/v-stripes", "ring", "v_stripes", (3.0, 5.0)),
    ("diamond/diagonal", "diamond", "diagonal", (4.0, 7.0)),
    ("bar/grid", "bar", "grid", (4.0, 6.0)),
    ("half-disc/circles", "half_disc", "circles", (3.0, 5.0)),
)

# The colour of each object class (labels 1..8), towards which ``class_colour`` blends its objects.
CLASS_COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.2, 1.0], [1.0, 0.9, 0.1],
                              [0.9, 0.1, 0.9], [0.1, 0.9, 0.9], [1.0, 0.55, 0.1], [0.55, 0.35, 0.2]])

# With ``colour_pairs``: the colours of the two classes of a pair (same shape and texture), warm then cool.
PAIR_COLOURS = torch.tensor([[1.0, 0.35, 0.1], [0.1, 0.5, 1.0]])

_OBJECT_SIZE = (14.0, 32.0)       # object diameter in px
_MAX_ROTATION = math.radians(15)  # shapes and textures are rotated by up to this, either way
_NOISE_STD = 0.03                 # per-pixel Gaussian noise, in units of the [0, 1] intensity range


@dataclass
class DenseDataset:
    """A train and a val split of synthetic scenes.

    ``train_images``/``val_images``: uint8 ``(n, 3, S, S)``; ``train_masks``/``val_masks``: int64
    ``(n, S, S)`` with 0 = background and 1..C the object classes; ``class_names``: length C + 1,
    ``"background"`` first; ``seed``: the seed :func:`make_dataset` was called with.
    """

    train_images: torch.Tensor
    train_masks: torch.Tensor
    val_images: torch.Tensor
    val_masks: torch.Tensor
    class_names: tuple[str, ...]
    seed: int

    @property
    def num_classes(self) -> int:
        """Number of mask labels, background included (C + 1)."""
        return len(self.class_names)


def make_dataset(num_train: int = 1000, num_val: int = 200, *, size: int = 64, num_classes: int = 5,
                 class_colour: float = 0.0, colour_pairs: bool = False, seed: int = 0) -> DenseDataset:
    """Render ``num_train`` + ``num_val`` scenes of ``size`` × ``size`` px with ``num_classes`` object classes.

    ``class_colour`` in [0, 1]: how far each object's colours are blended towards its class's
    colour (module docstring); 0 leaves colour free of class information. It draws nothing from
    the generators, so the scenes differ only in their objects' colours across values.
    ``colour_pairs``: classes in pairs that differ only in colour (module docstring); needs an
    even ``num_classes`` and ``class_colour > 0``. It draws what ``colour_pairs=False`` with the
    same arguments draws (labels, positions, sizes, phases); label l takes the shape and texture
    of row (l − 1) // 2 of the table and the warm (odd l) or cool (even l) colour.

    The train split is drawn from a generator seeded with ``2 * seed`` and the val split from one
    seeded with ``2 * seed + 1``, so the splits are independent streams, the train split does not
    depend on ``num_val`` (nor val on ``num_train``), and the same seed gives identical tensors.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train} and {num_val}")
    _check_size(size, num_classes, colour_pairs)
    _check_class_colour(class_colour, colour_pairs)
    train_images, train_masks = _render_many(num_train, size, num_classes, 2 * seed, class_colour, colour_pairs)
    val_images, val_masks = _render_many(num_val, size, num_classes, 2 * seed + 1, class_colour, colour_pairs)
    if colour_pairs:
        names = ("background",) + tuple(f"{spec[0]}/{tone}" for spec in CLASS_SPECS[:num_classes // 2]
                                        for tone in ("warm", "cool"))
    else:
        names = ("background",) + tuple(spec[0] for spec in CLASS_SPECS[:num_classes])
    return DenseDataset(train_images, train_masks, val_images, val_masks, names, seed)


def _check_size(size: int, num_classes: int, colour_pairs: bool = False) -> None:
    if colour_pairs:
        if not (2 <= num_classes <= 2 * len(CLASS_SPECS) and num_classes % 2 == 0):
            raise ValueError(f"with colour_pairs, num_classes must be an even number in 2..{2 * len(CLASS_SPECS)} "
                             f"(two colours of each shape), got {num_classes}")
    elif not 1 <= num_classes <= len(CLASS_SPECS):
        raise ValueError(f"num_classes must be in 1..{len(CLASS_SPECS)} (object classes), got {num_classes}")
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")


def _check_class_colour(class_colour: float, colour_pairs: bool = False) -> None:
    if not (isinstance(class_colour, (int, float)) and 0.0 <= class_colour <= 1.0):
        raise ValueError(f"class_colour must be a number in [0, 1] (0: colour carries no class information), "
                         f"got {class_colour!r}")
    if colour_pairs and not class_colour > 0:
        raise ValueError("colour_pairs needs class_colour > 0: the two classes of a pair differ only in colour, "
                         "so with class_colour = 0 they would be the same class under two labels")


def _render_many(count: int, size: int, num_classes: int, seed: int, class_colour: float = 0.0,
                 colour_pairs: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` scenes from one generator: uint8 ``(count, 3, S, S)`` and int64 ``(count, S, S)``."""
    g = torch.Generator().manual_seed(seed)
    images = torch.empty(count, 3, size, size, dtype=torch.uint8)
    masks = torch.empty(count, size, size, dtype=torch.int64)
    for i in range(count):
        images[i], masks[i] = render_scene(g, size, num_classes, class_colour, colour_pairs)
    return images, masks


def render_scene(generator: torch.Generator, size: int, num_classes: int, class_colour: float = 0.0,
                 colour_pairs: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One scene: image uint8 ``(3, size, size)`` and mask int64 ``(size, size)`` (0 = background).

    ``num_classes`` is the number of object classes C (labels 1..C); ``class_colour`` and
    ``colour_pairs`` as in :func:`make_dataset`. Draws only from ``generator``.
    """
    _check_size(size, num_classes, colour_pairs)
    _check_class_colour(class_colour, colour_pairs)
    image = _background(generator, size)
    _paint_distractors(generator, image)
    mask = torch.zeros(size, size, dtype=torch.int64)
    count = int(torch.randint(1, 4, (1,), generator=generator))
    for _ in range(count):
        _paint_object(generator, image, mask, num_classes, class_colour, colour_pairs)
    image = image + _NOISE_STD * torch.randn(image.shape, generator=generator)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8), mask


# ------------------------------------------------------------------ geometry helpers
@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``(x, y)``, each float32 ``(size, size)``, x along columns."""
    r = torch.arange(size, dtype=torch.float32) + 0.5
    return r.expand(size, size), r[:, None].expand(size, size)


def _uniform(g: torch.Generator, n: int) -> list[float]:
    """``n`` uniform [0, 1) draws as Python floats (one generator call)."""
    return torch.rand(n, generator=g).tolist()


def _frac(t: torch.Tensor) -> torch.Tensor:
    return t - torch.floor(t)


# ------------------------------------------------------------------ background and distractors
def _background(g: torch.Generator, size: int) -> torch.Tensor:
    """Float ``(3, S, S)`` in about [0, 1]: a base colour, two gratings (6–24 px) and smooth noise."""
    x, y = _grid(size)
    base = 0.2 + 0.6 * torch.rand(3, 1, 1, generator=g)
    image = base.expand(3, size, size).clone()
    for _ in range(2):
        angle_u, period_u, phase_u = _uniform(g, 3)
        angle, period, phase = angle_u * math.pi, 6 + 18 * period_u, 2 * math.pi * phase_u
        wave = torch.sin((x * math.cos(angle) + y * math.sin(angle)) * (2 * math.pi / period) + phase)
        colour = 0.12 * (2 * torch.rand(3, 1, 1, generator=g) - 1)
        image += colour * wave
    coarse = torch.randn(1, 3, 6, 6, generator=g)
    image += 0.07 * F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]
    return image


def _paint_distractors(g: torch.Generator, image: torch.Tensor) -> None:
    """1–2 thin lines and 0–1 irregular blob in random colours, blended in place (not objects)."""
    size = image.shape[-1]
    x, y = _grid(size)
    n_lines = 1 + int(torch.randint(0, 2, (1,), generator=g))
    for _ in range(n_lines):
        x0, y0, x1, y1, width, alpha = _uniform(g, 6)
        x0, y0, x1, y1 = (v * size for v in (x0, y0, x1, y1))
        dx, dy = x1 - x0, y1 - y0
        t = (((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-6)).clamp(0, 1)
        near = (x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2 <= (0.5 + 0.5 * width) ** 2
        _blend(image, near, torch.rand(3, 1, 1, generator=g), 0.4 + 0.4 * alpha)
    if float(torch.rand(1, generator=g)) < 0.6:
        coarse = torch.randn(1, 1, 5, 5, generator=g)
        field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
        _blend(image, field > 1.3, torch.rand(3, 1, 1, generator=g), 0.5)


def _blend(image: torch.Tensor, where: torch.Tensor, colour: torch.Tensor, alpha: float) -> None:
    """``image[:, where] = (1 − alpha)·image + alpha·colour`` in place; where: bool ``(S, S)``."""
    image.copy_(torch.where(where, (1 - alpha) * image + alpha * colour, image))


# ------------------------------------------------------------------ objects
def _paint_object(g: torch.Generator, image: torch.Tensor, mask: torch.Tensor, num_classes: int,
                  class_colour: float = 0.0, colour_pairs: bool = False) -> None:
    """Paint one object of a random class over ``image`` (3, S, S) and write its label into ``mask``."""
    size = image.shape[-1]
    label = 1 + int(torch.randint(0, num_classes, (1,), generator=g))
    _, shape, texture, (lo, hi) = CLASS_SPECS[(label - 1) // 2 if colour_pairs else label - 1]
    diameter_u, cx_u, cy_u, rot_u, period_u, phase_a, phase_b = _uniform(g, 7)
    radius = 0.5 * (_OBJECT_SIZE[0] + (_OBJECT_SIZE[1] - _OBJECT_SIZE[0]) * diameter_u)
    margin = radius / 3
    cx, cy = margin + (size - 2 * margin) * cx_u, margin + (size - 2 * margin) * cy_u
    angle = _MAX_ROTATION * (2 * rot_u - 1)
    x, y = _grid(size)
    a = (x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)    # object-local px, rotated
    b = -(x - cx) * math.sin(angle) + (y - cy) * math.cos(angle)
    inside = _shape(shape, a / radius, b / radius)
    period = lo + (hi - lo) * period_u
    second = _texture(texture, a, b, period, phase_a, phase_b)
    first_colour = torch.rand(3, 1, 1, generator=g)
    shift = 0.35 + 0.3 * torch.rand(3, 1, 1, generator=g)
    second_colour = _frac(first_colour + shift)
    colour = torch.where(second, second_colour, first_colour)
    if class_colour:
        target = PAIR_COLOURS[(label - 1) % 2] if colour_pairs else CLASS_COLOURS[label - 1]
        colour = (1 - class_colour) * colour + class_colour * target.view(3, 1, 1)
    image.copy_(torch.where(inside, colour, image))
    mask.masked_fill_(inside, label)


def _shape(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bool ``(S, S)``: inside the shape, in object coordinates scaled so the shape spans about [-1, 1]."""
    if shape == "disc":
        return u * u + v * v <= 1
    if shape == "square":
        return torch.maximum(u.abs(), v.abs()) <= 0.82
    if shape == "triangle":  # apex up (image y grows downwards), base at v = 0.75
        return (v <= 0.75) & (u.abs() <= (v + 1) * (1.05 / 1.75))
    if shape == "cross":
        return ((u.abs() <= 0.3) & (v.abs() <= 1)) | ((v.abs() <= 0.3) & (u.abs() <= 1))
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1) & (r2 >= 0.55 ** 2)
    if shape == "diamond":
        return u.abs() + v.abs() <= 1
    if shape == "bar":
        return (u.abs() <= 1) & (v.abs() <= 0.42)
    if shape == "half_disc":
        return (u * u + v * v <= 1) & (v >= -0.15)
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: str, a: torch.Tensor, b: torch.Tensor, period: float, pa: float, pb: float) -> torch.Tensor:
    """Bool ``(S, S)``: where the second colour goes; a, b object-local px, period px, phases in [0, 1)."""
    if texture == "h_stripes":
        return _frac(b / period + pa) < 0.5
    if texture == "v_stripes":
        return _frac(a / period + pa) < 0.5
    if texture == "diagonal":
        return _frac((a + b) / (period * math.sqrt(2)) + pa) < 0.5
    if texture == "checker":
        return (torch.floor(a / period + pa) + torch.floor(b / period + pb)).remainder(2) == 1
    if texture == "dots":
        da, db = _frac(a / period + pa) - 0.5, _frac(b / period + pb) - 0.5
        return da * da + db * db <= 0.3 ** 2
    if texture == "grid":
        return (_frac(a / period + pa) < 0.3) | (_frac(b / period + pb) < 0.3)
    if texture == "circles":
        return _frac(torch.sqrt(a * a + b * b) / period + pa) < 0.5
    if texture == "solid":
        return torch.zeros(a.shape, dtype=torch.bool)
    raise ValueError(f"unknown texture {texture!r}")


# ------------------------------------------------------------------ figure
_PALETTE = ((0.15, 0.15, 0.15), (0.90, 0.10, 0.10), (0.10, 0.70, 0.20), (0.15, 0.35, 0.95), (1.00, 0.80, 0.10),
            (0.85, 0.20, 0.85), (0.10, 0.85, 0.85), (1.00, 0.55, 0.10), (0.60, 0.40, 0.20))


def colour_masks(masks: torch.Tensor) -> torch.Tensor:
    """Masks int64 ``(..., S, S)`` as float RGB ``(..., S, S, 3)`` in [0, 1], one fixed colour per class."""
    palette = torch.tensor(_PALETTE, dtype=torch.float32)
    return palette[masks.clamp(0, len(_PALETTE) - 1)]


def save_examples(dataset: DenseDataset, path: str | os.PathLike, count: int = 8) -> None:
    """Save a PNG of the first ``count`` train images (top row) and their coloured masks (bottom row)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    count = max(1, min(count, dataset.train_images.shape[0]))
    fig = Figure(figsize=(1.5 * count, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, count, squeeze=False)
    images = dataset.train_images[:count].permute(0, 2, 3, 1).numpy()
    coloured = colour_masks(dataset.train_masks[:count]).numpy()
    for i in range(count):
        axes[0, i].imshow(images[i], interpolation="nearest")
        axes[1, i].imshow(coloured[i], interpolation="nearest")
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("image")
    axes[1, 0].set_ylabel("mask")
    handles = [Patch(color=_PALETTE[min(k, len(_PALETTE) - 1)], label=name)
               for k, name in enumerate(dataset.class_names)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.savefig(path, dpi=110)
