"""Shared data of the scoring tests: a tiny timm ViT, a folder of images, a run of checkpoints.

Import the fixtures by name into a test module (``from scoring_data import image_dir, run_dir``).
Needs timm and Pillow: import it after ``pytest.importorskip`` of both.
"""

import pytest
import timm
import torch
from PIL import Image

MODEL_KWARGS = {"img_size": 32, "patch_size": 8}
DSE_KW = dict(global_clusters=8)


def vit():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **MODEL_KWARGS)


@pytest.fixture
def image_dir(tmp_path, gen):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i in range(11):
        h, w = 30 + 3 * i, 50 - 2 * i
        pixels = torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(root / ("sub" if i % 2 else "") / f"img{i:02d}.png")
    (root / "broken.jpg").write_bytes(b"not an image")
    (root / "notes.txt").write_text("ignored")
    return root


@pytest.fixture
def run_dir(tmp_path):
    """Four 'epochs' of a DINO-style run and one corrupt checkpoint."""
    run = tmp_path / "run"
    run.mkdir()
    model = vit()
    for epoch in (0, 10, 20, 30):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.1)  # a different network at every epoch
        torch.save({"teacher": {f"backbone.{k}": v.clone() for k, v in model.state_dict().items()},
                    "epoch": epoch}, run / f"checkpoint{epoch:04d}.pth")
    (run / "checkpoint0040.pth").write_bytes(b"\x00" * 64)
    return run
