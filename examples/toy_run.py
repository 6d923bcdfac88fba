"""Writes a small stand-in for a training run: DINO-style checkpoints of a small ViT and images.

    python examples/toy_run.py toy        # toy/checkpoint0000.pth … toy/checkpoint0050.pth, toy/images/*.png,
                                          # toy/truth.csv

The checkpoints are not trained: each epoch moves the weights of a randomly initialised
``vit_tiny_patch16_224`` (64 × 64 input, 16 patch tokens) a seeded step further, so the scores
mean nothing about any real method. ``truth.csv`` holds a made-up "downstream metric" per
checkpoint (``miou``, a fixed rise-then-fall curve, not measured on anything), the shape of the
table ``dse compare`` reads. It exists to show ``dse score`` / ``dse select`` / ``dse plot`` /
``dse compare`` end to end on files you can make in seconds. Needs timm and Pillow
(``pip install 'dse_ext[models]'``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

MODEL = "vit_tiny_patch16_224"
MODEL_KWARGS = {"img_size": 64}


def write_images(folder: Path, count: int, generator: torch.Generator) -> None:
    """``count`` PNG scenes: a few coloured rectangles on a noisy background."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = torch.randint(0, 60, (3, 80, 96), generator=generator, dtype=torch.uint8)
        for _ in range(3):
            y, x = torch.randint(0, 60, (2,), generator=generator).tolist()
            h, w = torch.randint(10, 30, (2,), generator=generator).tolist()
            colour = torch.randint(0, 256, (3, 1, 1), generator=generator, dtype=torch.uint8)
            image[:, y:y + h, x:x + w] = colour
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"scene{i:03d}.png")


def write_checkpoints(folder: Path, epochs: list[int], generator: torch.Generator) -> None:
    """One DINO-layout checkpoint (``teacher``/``student`` with ``backbone.`` prefixes) per epoch."""
    import timm

    model = timm.create_model(MODEL, pretrained=False, num_classes=0, **MODEL_KWARGS)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    step = {k: 0.02 * torch.randn(v.shape, generator=generator) for k, v in state.items()}
    for epoch in epochs:
        weights = {k: v + epoch * step[k] for k, v in state.items()}
        torch.save({"teacher": {f"backbone.{k}": v for k, v in weights.items()},
                    "student": {f"module.backbone.{k}": v for k, v in weights.items()},
                    "epoch": epoch}, folder / f"checkpoint{epoch:04d}.pth")


def write_truth(path: Path, epochs: list[int]) -> None:
    """A made-up metric per checkpoint (peaks at 60 % of the run, then degrades): a stand-in only."""
    peak = 0.6 * epochs[-1]
    with open(path, "w") as f:
        f.write("checkpoint,miou\n")
        for epoch in epochs:
            f.write(f"checkpoint{epoch:04d}.pth,{0.5 - 0.2 * ((epoch - peak) / max(1, epochs[-1])) ** 2:.4f}\n")


def main(out: str | Path = "toy", *, images: int = 64, epochs: int = 6, seed: int = 0) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    write_images(out / "images", images, generator)
    numbers = [10 * e for e in range(epochs)]
    write_checkpoints(out, numbers, generator)
    write_truth(out / "truth.csv", numbers)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="toy", help="folder to write (default: toy)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    print(main(args.out, images=args.images, epochs=args.epochs))
