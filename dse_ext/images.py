"""A seeded subset of a folder of images, preprocessed the standard ImageNet way.

Needs Pillow (installed with timm/torchvision, or ``pip install 'dse_ext[models]'``).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch

__all__ = ["IMAGE_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD", "list_images", "load_image_subset", "normalize"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files under ``root`` (recursively, by extension), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory of images")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _preprocess(path: Path, size: int, crop_fraction: float) -> torch.Tensor:
    """Resize the shorter side to size / crop_fraction (bicubic), centre-crop size × size: (3, size, size) uint8."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        short = round(size / crop_fraction)
        w, h = image.size
        scale = short / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
        data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(size, size, 3).permute(2, 0, 1).contiguous()


def load_image_subset(root: str | os.PathLike, num_images: int, *, seed: int = 0, size: int = 224,
                      crop_fraction: float = 0.875, progress: bool = False) -> tuple[torch.Tensor, list[Path]]:
    """``num_images`` images drawn from ``root`` in a seeded order, as uint8 ``(n, 3, size, size)``.

    The files are shuffled with ``seed`` (a private generator: torch's global RNG is untouched)
    and read in that order; an unreadable file is reported (a ``UserWarning``) and replaced by the
    next one, so the same folder and seed always give the same images. Fewer readable images
    than ``num_images`` gives all of them, with a warning. Preprocessing: shorter side resized to
    ``size / crop_fraction`` (256 for 224), bicubic, centre crop; normalize with :func:`normalize`.

    Returns the images and their paths.
    """
    if num_images < 2:
        raise ValueError(f"num_images must be >= 2 (DSE compares images), got {num_images}")
    files = list_images(root)
    if not files:
        raise FileNotFoundError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(files), generator=generator).tolist()
    images, used = [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=min(num_images, len(files)), desc="images", unit="img", file=sys.stderr)
    for index in order:
        if len(images) == num_images:
            break
        try:
            images.append(_preprocess(files[index], size, crop_fraction))
            used.append(files[index])
            if bar is not None:
                bar.update(1)
        except Exception as e:  # unreadable or corrupt file
            warnings.warn(f"skipping unreadable image {files[index]}: {e}", UserWarning, stacklevel=2)
    if bar is not None:
        bar.close()
    if len(images) < 2:
        raise ValueError(f"{root}: fewer than 2 readable images")
    if len(images) < num_images:
        warnings.warn(f"{root}: only {len(images)} readable images, fewer than the {num_images} asked for",
                      UserWarning, stacklevel=2)
    return torch.stack(images), used


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` → ``dtype`` with the ImageNet mean/std normalization."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=dtype, device=images.device).view(1, 3, 1, 1)
    return (images.to(dtype) / 255.0 - mean) / std
