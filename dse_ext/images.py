"""A seeded subset of a folder of images, decoded to 8-bit RGB and preprocessed the ImageNet way.

Needs Pillow (installed with timm/torchvision, or ``pip install 'dse_ext[models]'``).

Decoding: every file is read as Pillow opens it (first frame only; ICC profiles and EXIF
orientation are not applied) and turned into 8-bit RGB by these rules, chosen by Pillow's mode:

* 8-bit modes ``1``, ``L``, ``P``, ``RGB``, ``RGBX``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` and
  the modes with alpha ``LA``, ``La``, ``PA``, ``RGBA``, ``RGBa``: Pillow's own conversion to RGB.
  Alpha is **dropped**, not composited onto a background (what torchvision's default loader
  does); premultiplied ``RGBa``/``La`` are un-premultiplied first, and a palette image's
  transparency is ignored (its palette colours are used). Files with 16 bits per channel that
  Pillow opens in one of these modes (16-bit RGB/RGBA PNGs and TIFFs) are already reduced to
  8 bits by Pillow (high byte).
* 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): the full range 0..65535 is mapped
  to 0..255 as ``round(value / 257)`` (so 32896 reads as 128 and 65535 as 255), then grey → RGB.
  Data using fewer bits (e.g. 12-bit scans in 16-bit files) therefore reads dark: no contrast
  stretching is done.
* 32-bit integer grey (``I``): read as 16-bit (the same mapping) when every value is in
  [0, 65535]; a value outside that range refuses the file (the message gives the range found).
* 32-bit float grey (``F``): finite values in [0, 1] are scaled as ``round(value · 255)``;
  NaN/Inf or any value outside [0, 1] refuses the file (the message gives the range found).
* any other mode refuses the file, naming the mode.

A refused or unreadable file is reported with a ``UserWarning`` that names it and says why, and
is replaced by the next file of the seeded order (so the same folder and seed always give the
same images). If more than half of the files tried are refused or unreadable, the folder is
refused with a ``ValueError`` naming the first few files and reasons, rather than scored on the
few files that could be read.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
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


#: Modes turned into RGB by Pillow's own conversion (alpha dropped).
_PILLOW_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
                           "LA", "La", "PA", "RGBA", "RGBa"})
#: 16-bit unsigned grey, every byte order Pillow names.
_UINT16_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
#: How many refused files the ``ValueError`` of a mostly-refused folder lists.
_LISTED_PROBLEMS = 3


class _RefusedImage(ValueError):
    """A file Pillow opens whose pixels cannot be mapped faithfully to 8-bit RGB."""


def _uint16_to_uint8(values: np.ndarray) -> np.ndarray:
    """Integers in [0, 65535] → uint8 ``round(value / 257)`` (exact integer arithmetic; 257 is odd, so no ties)."""
    return ((values.astype(np.int64) + 128) // 257).astype(np.uint8)


def _value_range(values: np.ndarray) -> str:
    """``"[min, max]"`` of the pixel values, as plain numbers (``"none"`` for no values)."""
    if values.size == 0:
        return "none"
    lo, hi = values.min().item(), values.max().item()
    return f"[{lo:.6g}, {hi:.6g}]" if isinstance(lo, float) else f"[{lo}, {hi}]"


def _decode_rgb(image):
    """The PIL image as an 8-bit ``RGB`` PIL image, by the module's rules; ``_RefusedImage`` otherwise."""
    from PIL import Image

    mode = image.mode
    if mode in _PILLOW_MODES:
        if mode == "La":  # premultiplied: Pillow converts La only to LA (which un-premultiplies)
            image = image.convert("LA")
        elif mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # the palette colours; converting directly warns in Pillow
        return image.convert("RGB")
    if mode in _UINT16_MODES:
        grey = _uint16_to_uint8(np.asarray(image))
    elif mode == "I":
        values = np.asarray(image)
        if values.size == 0 or values.min() < 0 or values.max() > 65535:
            raise _RefusedImage(
                f"mode I (32-bit integer grey) with values in {_value_range(values)}: only values in "
                f"[0, 65535] are read (as 16-bit grey, value / 257); save the image as 8-bit or as "
                f"16-bit unsigned grey after choosing how to map its range"
            )
        grey = _uint16_to_uint8(values)
    elif mode == "F":
        values = np.asarray(image, dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            raise _RefusedImage(
                f"mode F (32-bit float grey) with {int(values.size - finite.sum())} NaN/Inf pixel value(s) "
                f"(finite values: {_value_range(values[finite])}); only finite values in [0, 1] are read"
            )
        if values.size == 0 or values.min() < 0.0 or values.max() > 1.0:
            raise _RefusedImage(
                f"mode F (32-bit float grey) with values in {_value_range(values)}: only values in [0, 1] "
                f"are read (as value · 255); rescale the image to [0, 1] or save it as 8-bit"
            )
        grey = np.floor(values * 255.0 + 0.5).astype(np.uint8)
    else:
        raise _RefusedImage(
            f"mode {mode!r} has no faithful mapping to 8-bit RGB here (decoded: {', '.join(sorted(_PILLOW_MODES))}, "
            f"{', '.join(sorted(_UINT16_MODES))}, I, F); convert the file to 8-bit RGB"
        )
    return Image.fromarray(np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2)))


def _preprocess(path: Path, size: int, crop_fraction: float) -> torch.Tensor:
    """Decode to 8-bit RGB (see the module docstring), resize the shorter side to size / crop_fraction
    (bicubic), centre-crop size × size: (3, size, size) uint8."""
    from PIL import Image

    with Image.open(path) as image:
        image = _decode_rgb(image)
        short = round(size / crop_fraction)
        w, h = image.size
        scale = short / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
        data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(size, size, 3).permute(2, 0, 1).contiguous()


def _listed(problems: list[tuple[Path, str]]) -> str:
    shown = "; ".join(f"{path}: {reason}" for path, reason in problems[:_LISTED_PROBLEMS])
    more = len(problems) - _LISTED_PROBLEMS
    return shown + (f"; and {more} more" if more > 0 else "")


def load_image_subset(root: str | os.PathLike, num_images: int, *, seed: int = 0, size: int = 224,
                      crop_fraction: float = 0.875, progress: bool = False) -> tuple[torch.Tensor, list[Path]]:
    """``num_images`` images drawn from ``root`` in a seeded order, as uint8 ``(n, 3, size, size)``.

    The files are shuffled with ``seed`` (a private generator: torch's global RNG is untouched)
    and read in that order, each decoded to 8-bit RGB by the rules of the module docstring. A file
    refused by those rules (e.g. a float image outside [0, 1]) or unreadable is reported with a
    ``UserWarning`` naming it and the reason, and replaced by the next one, so the same folder and
    seed always give the same images. Fewer readable images than ``num_images`` gives all of them,
    with a warning. Preprocessing: shorter side resized to ``size / crop_fraction`` (256 for 224),
    bicubic, centre crop; normalize with :func:`normalize`.

    Returns the images and their paths.

    Raises:
        ValueError: ``num_images < 2``; fewer than 2 usable images; or more than half of the files
            tried were refused or unreadable (reading stops as soon as that is certain: more
            refused files than ``num_images``). The message names the first files and reasons.
        FileNotFoundError: ``root`` is not a directory or holds no image files.
    """
    if num_images < 2:
        raise ValueError(f"num_images must be >= 2 (DSE compares images), got {num_images}")
    files = list_images(root)
    if not files:
        raise FileNotFoundError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(files), generator=generator).tolist()
    images, used = [], []
    problems: list[tuple[Path, str]] = []  # (file, why it was not used), in the order tried
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=min(num_images, len(files)), desc="images", unit="img", file=sys.stderr)
    for index in order:
        if len(images) == num_images or len(problems) > num_images:
            break  # done, or more than half of the files tried are bad whatever the rest holds
        path = files[index]
        try:
            images.append(_preprocess(path, size, crop_fraction))
            used.append(path)
            if bar is not None:
                bar.update(1)
        except _RefusedImage as e:
            problems.append((path, f"refused: {e}"))
            warnings.warn(f"skipping image {path}: refused: {e}", UserWarning, stacklevel=2)
        except Exception as e:  # unreadable or corrupt file
            problems.append((path, f"unreadable: {type(e).__name__}: {e}"))
            warnings.warn(f"skipping unreadable image {path}: {type(e).__name__}: {e}", UserWarning, stacklevel=2)
    if bar is not None:
        bar.close()
    tried = len(images) + len(problems)
    if 2 * len(problems) > tried:
        raise ValueError(
            f"{root}: {len(problems)} of the {tried} image files tried were refused or unreadable (more than "
            f"half), so the folder is not scored on the few that could be read: {_listed(problems)}. Convert "
            f"the images to a decodable form (8-bit RGB/grey, 16-bit grey, float grey in [0, 1]) or use "
            f"another folder"
        )
    if len(images) < 2:
        reasons = f": {_listed(problems)}" if problems else ""
        raise ValueError(f"{root}: fewer than 2 readable images ({len(images)} of {tried} files){reasons}")
    if len(images) < num_images:
        warnings.warn(f"{root}: only {len(images)} readable images, fewer than the {num_images} asked for",
                      UserWarning, stacklevel=2)
    return torch.stack(images), used


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` → ``dtype`` with the ImageNet mean/std normalization."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=dtype, device=images.device).view(1, 3, 1, 1)
    return (images.to(dtype) / 255.0 - mean) / std
