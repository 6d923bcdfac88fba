"""Checkpoint layouts SSL code writes, auto-detection, and refusing weights that do not fit."""

import argparse

import pytest
import torch

from dse_ext.checkpoints import CheckpointError, load_weights, read_checkpoint

timm = pytest.importorskip("timm")


def vit():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8)


@pytest.fixture(scope="module")
def weights():
    return {k: v.clone() for k, v in vit().state_dict().items()}


def prefixed(state, prefix, shift=0.0):
    return {prefix + k: v + shift for k, v in state.items()}


LAYOUTS = {
    "dino": lambda w: {"teacher": {**prefixed(w, "backbone."), "head.last_layer.weight": torch.zeros(4, 4)},
                       "student": prefixed(w, "module.backbone.", 1.0), "epoch": 10,
                       "args": argparse.Namespace(arch="vit_tiny")},
    "ibot": lambda w: {"teacher": prefixed(w, "backbone."), "student": prefixed(w, "module.backbone.", 1.0)},
    "mocov3": lambda w: {"state_dict": {**prefixed(w, "module.momentum_encoder.", 1.0),
                                        **prefixed(w, "module.base_encoder."),
                                        "module.predictor.0.weight": torch.zeros(2, 2)}, "arch": "vit_tiny"},
    "lightning": lambda w: {"state_dict": {**prefixed(w, "model."), "head.weight": torch.zeros(2, 2)},
                            "epoch": 3, "global_step": 30},
    "plain": lambda w: dict(w),
    "wrapped": lambda w: {"model": prefixed(w, "module.")},
}
EXPECTED = {"dino": ("teacher", "backbone."), "ibot": ("teacher", "backbone."),
            "mocov3": ("state_dict", "module.base_encoder."), "lightning": ("state_dict", "model."),
            "plain": (None, ""), "wrapped": ("model", "module.")}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layouts_are_detected_and_loaded(tmp_path, weights, layout):
    path = tmp_path / f"{layout}.pth"
    torch.save(LAYOUTS[layout](weights), path)
    model = vit()
    report = load_weights(model, path)
    assert (report.key, report.prefix) == EXPECTED[layout]
    assert report.ok and report.loaded == len(weights) and not report.missing
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k


def test_explicit_key_and_prefix_pick_the_student_or_momentum_copy(tmp_path, weights):
    path = tmp_path / "dino.pth"
    torch.save(LAYOUTS["dino"](weights), path)
    model = vit()
    load_weights(model, path, key="student", prefix="module.backbone.")
    torch.testing.assert_close(model.state_dict()["norm.weight"], weights["norm.weight"] + 1)
    path = tmp_path / "moco.pth"
    torch.save(LAYOUTS["mocov3"](weights), path)
    report = load_weights(model, path, prefix="module.momentum_encoder.")
    assert report.prefix == "module.momentum_encoder." and "module.predictor.0.weight" not in report.unexpected
    torch.testing.assert_close(model.state_dict()["norm.weight"], weights["norm.weight"] + 1)


def test_unexpected_keys_are_reported_not_fatal(tmp_path, weights):
    path = tmp_path / "extra.pth"
    torch.save({**weights, "extra.weight": torch.ones(1)}, path)
    report = load_weights(vit(), path)
    assert report.ok and report.unexpected == ["extra.weight"] and "unexpected: extra.weight" in report.summary()


def test_safetensors(tmp_path, weights):
    safetensors = pytest.importorskip("safetensors.torch")
    path = tmp_path / "model.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    model = vit()
    assert load_weights(model, path).loaded == len(weights)
    assert torch.equal(model.state_dict()["pos_embed"], weights["pos_embed"])


def test_refuses_missing_or_misshapen_weights_and_leaves_the_model_alone(tmp_path, weights):
    partial = {k: v for k, v in weights.items() if not k.startswith("blocks.11")}
    torch.save({"teacher": prefixed(partial, "backbone.")}, tmp_path / "partial.pth")
    model = vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="missing: blocks.11"):
        load_weights(model, tmp_path / "partial.pth")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert load_weights(model, tmp_path / "partial.pth", strict=False).missing  # opt-in
    bad = dict(weights, pos_embed=torch.zeros(1, 5, 192))
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match="shape mismatch: pos_embed"):
        load_weights(vit(), tmp_path / "shape.pth")


def test_unreadable_files_give_actionable_errors(tmp_path, weights):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "absent.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(tmp_path / "garbage.pth")
    torch.save(weights, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_weights(vit(), tmp_path / "truncated.pth")
    torch.save({"state_dict": weights, "when": argparse.ArgumentParser}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="--unsafe-load"):
        read_checkpoint(tmp_path / "pickled.pth")
    assert load_weights(vit(), tmp_path / "pickled.pth", unsafe=True).ok
    torch.save({"optimizer": {"lr": 1.0}}, tmp_path / "nothing.pth")
    with pytest.raises(CheckpointError, match="no state dict found"):
        load_weights(vit(), tmp_path / "nothing.pth")
    with pytest.raises(CheckpointError, match="no sub-dict 'teacher'"):
        load_weights(vit(), tmp_path / "full.pth", key="teacher")


# ---------------------------------------------------------------- renaming keys (--rename-keys)
class _ResNetLike(torch.nn.Module):
    """torchvision's names: conv1, bn1, layer1 (a block with conv1), fc-less."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3)
        self.bn1 = torch.nn.BatchNorm2d(4)
        self.layer1 = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3))


RESNET_RULES = [r"^0\.=conv1.", r"^1\.=bn1.", r"^4\.=layer1."]


def _flattened(model, prefix="encoder.", shift=0.0):
    """The model's weights as an nn.Sequential(conv1, bn1, relu, maxpool, layer1) would name them."""
    names = {"conv1.": "0.", "bn1.": "1.", "layer1.": "4."}
    out = {}
    for k, v in model.state_dict().items():
        head = next(n for n in names if k.startswith(n))
        out[prefix + names[head] + k[len(head):]] = v + shift if v.is_floating_point() else v
    return out


def test_rename_loads_a_resnet_flattened_into_sequential(tmp_path):
    source, target = _ResNetLike(), _ResNetLike()
    path = tmp_path / "simclr.pth"
    # The encoder and decoys: a momentum copy under another prefix, a projection head.
    torch.save({"state_dict": {**_flattened(source), **_flattened(source, "momentum_encoder.", 1.0),
                               "projector.0.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(CheckpointError, match="do not fit the model"):
        load_weights(target, path)  # the names differ: nothing usable without the rules
    report = load_weights(target, path, rename=RESNET_RULES)
    assert report.prefix == "encoder." and report.ok
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
    assert ("0.weight", "conv1.weight") in report.renamed
    assert "renamed: " in report.summary() and "conv1.weight" in report.summary()
    # (regex, replacement) pairs and an explicit prefix work the same way
    other = _ResNetLike()
    pairs = [tuple(rule.split("=", 1)) for rule in RESNET_RULES]
    load_weights(other, path, prefix="encoder.", rename=pairs)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in source.state_dict().items())


@pytest.mark.parametrize("rules, message", [
    (["^0\\.conv1."], "must be REGEX=REPLACEMENT"),
    (["(=x"], "not a valid regular expression"),
    (["^0\\.=\\2."], "refers to group '2'"),
    (["=x"], "empty regex"),
    ([3], "must be a 'REGEX=REPLACEMENT' string"),
])
def test_bad_rename_rules_are_refused_before_reading(tmp_path, rules, message):
    with pytest.raises(ValueError, match=message):
        load_weights(_ResNetLike(), tmp_path / "never_read.pth", rename=rules)


def test_rename_rules_that_merge_two_keys_are_refused(tmp_path):
    source = _ResNetLike()
    path = tmp_path / "ckpt.pth"
    torch.save(_flattened(source, prefix=""), path)
    with pytest.raises(CheckpointError, match="map both '0.weight' and '1.weight' to"):
        load_weights(_ResNetLike(), path, rename=[r"^[01]\.weight=conv1.weight"])


def test_dse_score_prints_what_the_first_checkpoint_loaded(tmp_path, capsys):
    pytest.importorskip("PIL.Image")
    from PIL import Image

    from dse_ext import cli

    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(torch.full((32, 32, 3), 40 * i, dtype=torch.uint8).numpy()).save(images / f"{i}.png")
    model = vit()
    for epoch in (1, 2):
        torch.save({"teacher": {f"backbone.{k}": v for k, v in model.state_dict().items()},
                    "student": {f"module.backbone.{k}": v for k, v in model.state_dict().items()}},
                   tmp_path / f"checkpoint{epoch:04d}.pth")
    argv = ["score", "--model", "vit_tiny_patch16_224", "--model-kwargs", '{"img_size": 32, "patch_size": 8}',
            "--checkpoints", str(tmp_path / "checkpoint*.pth"), "--images", str(images), "--out",
            str(tmp_path / "r.csv"), "--num-images", "4", "--dse-batch", "4", "--global-clusters", "4",
            "--local-clusters", "2", "--no-progress"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("loaded ") == 1 and "['teacher'] prefix 'backbone.'" in err
