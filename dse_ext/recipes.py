"""How to load the checkpoints of common SSL methods: the flags of ``dse score`` for each.

Each :class:`Recipe` names a timm model for the method's usual backbone, the checkpoint layout
its official training code writes (as read from that code; the tests build checkpoints in that
layout, with the decoy copies it holds, and check that the intended weights are the ones
loaded), which sub-network ``dse score`` takes by default and the flags that take the other one.
The README's table "Recipes for common SSL checkpoints" is made from :data:`RECIPES`
(:func:`markdown_table`). ``dse score`` prints what it loaded from the first checkpoint (the
:class:`~dse_ext.checkpoints.LoadReport`): if a file of yours differs, that report says so.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

__all__ = ["Recipe", "RECIPES", "markdown_table"]

# EsViT's Swin (the original Microsoft implementation) keeps each stage's patch merging at the end
# of the stage; timm's at the start of the next one. Last stage first, so no key moves twice.
_SWIN_DOWNSAMPLE = (r"^layers\.2\.downsample\.=layers.3.downsample.", r"^layers\.1\.downsample\.=layers.2.downsample.",
                    r"^layers\.0\.downsample\.=layers.1.downsample.")


@dataclass(frozen=True)
class Recipe:
    """The ``dse score`` flags for one method's checkpoints."""

    method: str
    model: str                              # --model (an example of the method's usual backbone)
    layout: str                             # what the checkpoint holds, in words
    takes: str                              # the sub-network taken by the flags below
    model_kwargs: dict = field(default_factory=dict)  # --model-kwargs
    key: str | None = None                  # --checkpoint-key (None: detected)
    prefix: str | None = None               # --strip-prefix (None: detected)
    rename: tuple[str, ...] = ()            # --rename-keys, in order
    other: str = ""                         # which other copy the checkpoint holds
    other_key: str | None = None            # --checkpoint-key that takes it
    other_prefix: str | None = None         # --strip-prefix that takes it

    def flags(self, other: bool = False) -> list[str]:
        """The command-line flags (``other=True``: those taking the other copy)."""
        out = ["--model", self.model]
        if self.model_kwargs:
            out += ["--model-kwargs", json.dumps(self.model_kwargs)]
        key, prefix = (self.other_key, self.other_prefix) if other else (self.key, self.prefix)
        if other and key is None:
            key = self.key
        if key:
            out += ["--checkpoint-key", key]
        if prefix:
            out += ["--strip-prefix", prefix]
        for rule in self.rename:
            out += ["--rename-keys", rule]
        return out

    def load_kwargs(self, other: bool = False) -> dict:
        """The same as keyword arguments of :func:`dse_ext.load_weights`."""
        key, prefix = (self.other_key or self.key, self.other_prefix) if other else (self.key, self.prefix)
        return {"key": key, "prefix": prefix, "rename": list(self.rename) or None}


_DINO_LAYOUT = ("`teacher` and `student` state dicts (`backbone.` / `module.backbone.` prefixes, plus the "
                "projection heads), optimizer state, `args`")

RECIPES: dict[str, Recipe] = {r.method: r for r in (
    Recipe("DINO", "vit_small_patch16_224", _DINO_LAYOUT, "the teacher, as DINO's evaluation code does",
           other="the student", other_key="student"),
    Recipe("iBOT", "vit_small_patch16_224", _DINO_LAYOUT + "; `masked_embed` in the backbone",
           "the teacher, as iBOT's evaluation code does", other="the student", other_key="student"),
    Recipe("Mugs", "vit_small_patch16_224", _DINO_LAYOUT + "; instance, local-group and group heads",
           "the teacher, as Mugs' evaluation code does", other="the student", other_key="student"),
    Recipe("MAE", "vit_base_patch16_224", "`model`: the encoder at the top level and the decoder "
           "(`decoder_*`, `mask_token`), optimizer and scaler state", "the encoder (the decoder is left out)"),
    Recipe("MoCo v3", "vit_small_patch16_224", "`state_dict` with `module.base_encoder.`, "
           "`module.momentum_encoder.` and `module.predictor.`", "the base encoder, as MoCo v3's linear "
           "evaluation does", other="the momentum encoder", other_prefix="module.momentum_encoder."),
    Recipe("I-JEPA", "vit_huge_patch14_224", "`encoder`, `target_encoder` and `predictor` state dicts "
           "(`module.` prefixes), optimizer state; the ViT has no class token",
           "the target encoder, which I-JEPA evaluates", model_kwargs={"class_token": False, "global_pool": "avg"},
           key="target_encoder", other="the context encoder", other_key="encoder"),
    Recipe("SimSiam", "resnet50", "`state_dict` with `module.encoder.` (its `fc` is the projector) and "
           "`module.predictor.`", "the encoder (its projector is left out)"),
    Recipe("MEC", "resnet50", "`state_dict` with `module.encoder.`, the EMA `module.teacher.` and "
           "`module.predictor.`", "the online encoder", prefix="module.encoder.", other="the EMA teacher",
           other_prefix="module.teacher."),
    Recipe("DenseCL", "resnet50", "`state_dict` of the whole model: `encoder_q.0.` (backbone), "
           "`encoder_q.1.` (dense neck), their momentum copies `encoder_k.*`, the queues", "the query backbone",
           prefix="encoder_q.0.", other="the momentum (key) backbone", other_prefix="encoder_k.0."),
    Recipe("SwAV", "resnet50", "`state_dict` with `module.` (backbone, `projection_head`, `prototypes`)",
           "the backbone (head and prototypes are left out)"),
    Recipe("VICReg", "resnet50", "`model` with `module.backbone.` and `module.projector.`", "the backbone"),
    Recipe("Barlow Twins", "resnet50", "`model` with `module.backbone.`, `module.projector.` and `module.bn.`",
           "the backbone"),
    Recipe("BYOL", "resnet50", "solo-learn's Lightning `state_dict`: `backbone.`, `projector.`, `predictor.`, "
           "`momentum_backbone.`, `momentum_projector.`", "the online backbone",
           other="the target network", other_prefix="momentum_backbone."),
    Recipe("EsViT", "swin_tiny_patch4_window7_224", _DINO_LAYOUT + "; Swin keys of the original "
           "implementation (patch merging at the end of a stage)", "the teacher", rename=_SWIN_DOWNSAMPLE,
           other="the student", other_key="student"),
)}


def markdown_table() -> str:
    """The README's recipes table."""
    lines = ["| method | checkpoint layout | `dse score` flags | takes | the other copy |",
             "|---|---|---|---|---|"]
    for r in RECIPES.values():
        other = "—"
        if r.other:
            switch = f"--checkpoint-key {r.other_key}" if r.other_key else f"--strip-prefix {r.other_prefix}"
            other = f"{r.other}: `{switch}`"
        lines.append(f"| {r.method} | {r.layout} | `{shlex.join(r.flags())}` | {r.takes} | {other} |")
    return "\n".join(lines)
