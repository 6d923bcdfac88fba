"""Vision models of Hugging Face ``transformers`` saved locally: ``--model hf:PATH``.

``PATH`` is a ``save_pretrained`` directory (``config.json`` and the weights) of a ViT-style
model — DINOv2 (with or without registers), ViT-MAE, I-JEPA, ViT, ... — loaded with
``AutoModel.from_pretrained(PATH, local_files_only=True)`` (nothing is downloaded). Its dense
features are the patch tokens of the last hidden state with the special tokens (class token,
registers) removed; their count is found once, by one forward of a blank image, as the hidden
state's length less the number of patches. ViT-MAE is run without masking and with its patches
in their own order (``mask_ratio = 0`` and a fixed ``noise``: its forward would otherwise
shuffle the tokens with torch's global RNG). Images are normalised with the ImageNet mean and
standard deviation, as for timm models.

Checkpoints of such a model are ``save_pretrained`` directories too (what the ``Trainer`` writes as
``checkpoint-500/``): give their weights files, ``--checkpoints 'run/checkpoint-*/model.safetensors'``
(the directory's own weights: ``PATH/model.safetensors``). Each is loaded by
``from_pretrained`` of its directory, which knows the model's own key names (transformers may
store other names than it uses in memory), and must fit the model exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["HF_PREFIX", "load_hf_model"]

HF_PREFIX = "hf:"


def _pair(value) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


def load_hf_model(path: str | Path, config_overrides: dict | None = None) -> nn.Module:
    """The model saved in ``path``, ready for :class:`dse_ext.FeatureExtractor` (see the module docs).

    ``config_overrides`` are set on its configuration before it is built. The model gets a
    ``forward_features(images) -> last hidden state``, ``num_prefix_tokens``, ``dse_input_size``
    (the configuration's image size) and ``dse_load_checkpoint(weights file or directory)``.
    """
    try:
        from transformers import AutoConfig, AutoModel
    except ImportError:
        raise ImportError("--model hf:PATH needs the transformers package: pip install 'dse_ext[hf]'") from None
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: not a save_pretrained directory of transformers (no config.json)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    for name, value in (config_overrides or {}).items():
        if not hasattr(config, name):
            raise ValueError(f"model_kwargs: the {type(config).__name__} of {path} has no setting {name!r}")
        setattr(config, name, value)
    masked = config.model_type == "vit_mae"
    if masked:
        config.mask_ratio = 0.0
    if not hasattr(config, "patch_size") or not hasattr(config, "image_size"):
        raise ValueError(f"{path}: a {config.model_type} model has no patch_size/image_size: not a ViT-style "
                         "vision model")
    model = AutoModel.from_pretrained(path, config=config, local_files_only=True)
    model.eval()
    patch = _pair(config.patch_size)
    size = _pair(config.image_size)

    def forward_features(images: torch.Tensor) -> torch.Tensor:
        kwargs = {}
        if masked:  # ascending noise: every patch kept, in its own order
            count = (images.shape[-2] // patch[0]) * (images.shape[-1] // patch[1])
            kwargs["noise"] = torch.arange(count, dtype=torch.float32, device=images.device).expand(images.shape[0], -1)
        return model(pixel_values=images, **kwargs).last_hidden_state

    def load_checkpoint(weights: str | Path) -> None:
        """Replaces the weights by those saved in the directory of ``weights``."""
        folder = Path(weights)
        folder = folder if folder.is_dir() else folder.parent
        if not (folder / "config.json").is_file():
            raise ValueError(f"{weights}: not in a save_pretrained directory (no config.json next to it)")
        source = AutoModel.from_pretrained(folder, config=config, local_files_only=True)
        missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights}: the weights do not fit the model (missing {list(missing)[:4]}, "
                             f"unexpected {list(unexpected)[:4]})")

    model.forward_features = forward_features
    model.dse_load_checkpoint = load_checkpoint
    with torch.no_grad():
        length = forward_features(torch.zeros(1, 3, *size)).shape[1]
    model.num_prefix_tokens = length - (size[0] // patch[0]) * (size[1] // patch[1])
    model.dse_input_size = size[0]
    return model
