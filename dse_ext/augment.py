"""The augmented views of the LiDAR score: a fixed, seeded protocol (no torchvision needed).

Each view of an image is a random resized crop (area fraction uniform in ``[0.25, 1]``, aspect
ratio log-uniform in ``[3/4, 4/3]``, position uniform where the crop fits), resampled bilinearly
back to the image's size, then flipped horizontally with probability 1/2. Every draw comes from
the given generator, so the same images, seed and view count give the same views on every run
and every machine (before rounding to uint8 the arithmetic is float32 on the CPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["random_views"]

MIN_AREA = 0.25
ASPECT = (3 / 4, 4 / 3)


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def random_views(images: torch.Tensor, views: int, generator: torch.Generator) -> torch.Tensor:
    """``views`` augmented views of each image.

    Args:
        images: ``(n, 3, H, W)`` uint8 (0–255) or float images, on the CPU.
        views: views per image, at least 1.
        generator: a CPU ``torch.Generator``; torch's global RNG is not used.

    Returns:
        ``(n, views, 3, H, W)`` in the dtype of ``images`` (uint8 views are rounded).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be (n, 3, H, W), got {shape}")
    if not isinstance(views, int) or isinstance(views, bool) or views < 1:
        raise ValueError(f"views must be an integer >= 1, got {views!r}")
    n = images.shape[0]
    count = n * views
    x = images.float().repeat_interleave(views, dim=0)
    area = _uniform(count, MIN_AREA, 1.0, generator)
    aspect = torch.exp(_uniform(count, math.log(ASPECT[0]), math.log(ASPECT[1]), generator))
    sx = (area * aspect).sqrt().clamp(max=1.0)  # crop width / image width
    sy = (area / aspect).sqrt().clamp(max=1.0)
    tx = (1 - sx) * _uniform(count, -1.0, 1.0, generator)  # crop centre, in [-1, 1] coordinates
    ty = (1 - sy) * _uniform(count, -1.0, 1.0, generator)
    flip = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if images.dtype == torch.uint8:
        out = out.round().clamp(0, 255).to(torch.uint8)
    else:
        out = out.to(images.dtype)
    return out.reshape(n, views, *images.shape[1:])
