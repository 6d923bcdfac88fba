"""Recipes for common SSL checkpoints: each layout, with its decoys, loads the intended weights."""

import argparse
from pathlib import Path

import pytest
import torch

from dse_ext.checkpoints import load_weights
from dse_ext.recipes import RECIPES, markdown_table

timm = pytest.importorskip("timm")

README = Path(__file__).resolve().parents[1] / "README.md"


def _backbone(recipe):
    """A small model with the recipe's architecture family and keyword arguments."""
    if recipe.model.startswith("vit"):
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                                 depth=2, **recipe.model_kwargs)
    if recipe.model.startswith("resnet"):
        return timm.create_model("resnet18", pretrained=False, num_classes=0)
    if recipe.model.startswith("swin"):
        return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0, img_size=32,
                                 window_size=2, embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    raise AssertionError(recipe.model)


def shifted(w, c):
    return {k: v + c if v.is_floating_point() else v for k, v in w.items()}


def pre(w, prefix):
    return {prefix + k: v for k, v in w.items()}


def z(*shape):
    return torch.zeros(*shape)


OPT = {"state": {0: {"exp_avg": z(3), "step": torch.tensor(5.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
ARGS = argparse.Namespace(arch="backbone", epochs=100)
HEAD = {"mlp.0.weight": z(4, 4), "last_layer.weight_g": z(4, 1)}


def _original_swin(w):
    """timm's Swin keys as the original implementation names them (patch merging at the end of a
    stage), with the buffers it also saves."""
    import re

    out = {re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k): v
           for k, v in w.items()}
    out["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(4, 4, dtype=torch.long)
    out["layers.0.blocks.0.attn_mask"] = z(4, 4, 4)
    return out


def _dino(w, o, extra_teacher=None, extra_student=None):
    return {"teacher": {**pre(w, "backbone."), **pre(HEAD, "head."), **(extra_teacher or {})},
            "student": {**pre(o, "module.backbone."), **pre(HEAD, "module.head."), **(extra_student or {})},
            "optimizer": OPT, "epoch": 100, "args": ARGS, "dino_loss": {"center": z(1, 4)}}


# (the intended weights w, the other copy o) -> the checkpoint object, as each method writes it
LAYOUTS = {
    "DINO": _dino,
    "iBOT": lambda w, o: _dino(w, o, {"backbone.masked_embed": z(1, 4)}, {"module.backbone.masked_embed": z(1, 4)}),
    "Mugs": lambda w, o: _dino(w, o, {"instance_head.mlp.0.weight": z(4, 4), "local_group_head.0.weight": z(4, 4),
                                      "group_head.mlp.0.weight": z(4, 4)}),
    "MAE": lambda w, o: {"model": {**w, "mask_token": z(1, 1, 4), "decoder_embed.weight": z(4, 4),
                                   "decoder_pos_embed": z(1, 17, 4), "decoder_blocks.0.norm1.weight": z(4),
                                   "decoder_norm.weight": z(4), "decoder_pred.weight": z(4, 4)},
                         "optimizer": OPT, "epoch": 799, "scaler": {"scale": 1024.0}, "args": ARGS},
    "MoCo v3": lambda w, o: {"epoch": 300, "arch": "vit_small", "optimizer": OPT, "scaler": {"scale": 1.0},
                             "state_dict": {**pre(w, "module.base_encoder."), **pre(o, "module.momentum_encoder."),
                                            "module.base_encoder.head.0.weight": z(4, 4),
                                            "module.momentum_encoder.head.0.weight": z(4, 4),
                                            "module.predictor.0.weight": z(4, 4)}},
    "I-JEPA": lambda w, o: {"encoder": pre(o, "module."), "target_encoder": pre(w, "module."),
                            "predictor": {"module.predictor_embed.weight": z(4, 4), "module.mask_token": z(1, 1, 4)},
                            "opt": OPT, "scaler": None, "epoch": 300, "loss": 0.1, "batch_size": 2048,
                            "world_size": 16, "lr": 1e-3},
    "SimSiam": lambda w, o: {"epoch": 100, "arch": "resnet50", "optimizer": OPT,
                             "state_dict": {**pre(w, "module.encoder."), "module.encoder.fc.0.weight": z(4, 4),
                                            "module.predictor.0.weight": z(4, 4)}},
    "MEC": lambda w, o: {"epoch": 100, "arch": "resnet50", "optimizer": OPT,
                         "state_dict": {**pre(w, "module.encoder."), **pre(o, "module.teacher."),
                                        "module.predictor.0.weight": z(4, 4)}},
    "DenseCL": lambda w, o: {"meta": {"epoch": 200, "iter": 1000}, "optimizer": OPT,
                             "state_dict": {**pre(w, "encoder_q.0."), "encoder_q.1.mlp.0.weight": z(4, 4),
                                            **pre(o, "encoder_k.0."), "encoder_k.1.mlp.0.weight": z(4, 4),
                                            "queue": z(4, 8), "queue2": z(4, 8),
                                            "queue_ptr": torch.zeros(1, dtype=torch.long)}},
    "SwAV": lambda w, o: {"epoch": 800, "optimizer": OPT,
                          "state_dict": {**pre(w, "module."), "module.projection_head.0.weight": z(4, 4),
                                         "module.prototypes.weight": z(8, 4)}},
    "VICReg": lambda w, o: {"epoch": 1000, "optimizer": OPT,
                            "model": {**pre(w, "module.backbone."), "module.projector.0.weight": z(4, 4)}},
    "Barlow Twins": lambda w, o: {"epoch": 1000, "optimizer": OPT,
                                  "model": {**pre(w, "module.backbone."), "module.projector.0.weight": z(4, 4),
                                            "module.bn.running_mean": z(4)}},
    "BYOL": lambda w, o: {"epoch": 400, "global_step": 1000, "pytorch-lightning_version": "2.0.0",
                          "optimizer_states": [OPT],
                          "state_dict": {**pre(w, "backbone."), "projector.0.weight": z(4, 4),
                                         "predictor.0.weight": z(4, 4), **pre(o, "momentum_backbone."),
                                         "momentum_projector.0.weight": z(4, 4)}},
    "EsViT": lambda w, o: _dino(_original_swin(w), _original_swin(o)),
}


def test_every_recipe_has_a_layout_test():
    assert set(LAYOUTS) == set(RECIPES)


@pytest.mark.parametrize("method", list(RECIPES))
def test_recipe_loads_the_intended_weights_and_the_other_copy(tmp_path, method):
    recipe = RECIPES[method]
    torch.manual_seed(0)  # noqa: the test's own model init; dse_ext never reseeds
    model = _backbone(recipe)
    intended = {k: v.clone() for k, v in model.state_dict().items()}
    other = shifted(intended, 1.0)
    path = tmp_path / "checkpoint0100.pth"
    torch.save(LAYOUTS[method](intended, other), path)

    fresh = _backbone(recipe)
    report = load_weights(fresh, path, **recipe.load_kwargs())
    assert report.ok, report.summary()
    for k, v in intended.items():
        assert torch.equal(fresh.state_dict()[k], v), f"{method}: {k} is not the intended copy"
    if recipe.other:
        load_weights(fresh, path, **recipe.load_kwargs(other=True))
        for k, v in other.items():
            assert torch.equal(fresh.state_dict()[k], v), f"{method}: {k} is not the other copy"


def test_readme_shows_the_recipes_table():
    assert markdown_table() in README.read_text(), "regenerate the README table: dse_ext.recipes.markdown_table()"
