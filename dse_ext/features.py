"""Dense (patch-level) features ``(B, N, d)`` from vision models.

Two ways in:

- **timm models** (ViT/DeiT/EVA-style transformers, ResNet, ConvNeXt, Swin, …) through timm's
  ``forward_intermediates``: ``layer`` is a block (transformers) or stage (CNNs, Swin) index,
  ``-1`` (the default) the last one. Transformer tokens come out after the final norm with the
  class/register (prefix) tokens removed; feature maps ``(B, C, H, W)`` are flattened to
  ``(B, H·W, C)`` (the final norm is applied where timm applies it to the last stage).
- **any** ``nn.Module`` by a dotted submodule name (``layer="encoder.layers.3"``): a forward hook
  takes that module's output (the first tensor of a tuple/list/dict output) and the forward
  stops there. The reshape rule: a 3-d output ``(B, L, d)`` is tokens, of which the first
  ``num_prefix_tokens`` are dropped (default: the model's ``num_prefix_tokens`` attribute, else
  0); a 4-d output is a feature map, read as ``(B, C, H, W)`` unless ``channels_last=True``
  (``(B, H, W, C)``, as Swin stages produce), and flattened to ``(B, H·W, C)``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["dense_features", "FeatureExtractor", "tokens_from_output"]


class _StopForward(Exception):
    """Raised by the hook once the wanted layer has run: the rest of the forward is skipped."""


def tokens_from_output(output, *, num_prefix_tokens: int = 0, channels_last: bool = False) -> torch.Tensor:
    """Applies the reshape rule of this module to a layer's output; returns ``(B, N, d)``."""
    tensor = _first_tensor(output)
    if tensor is None:
        raise TypeError(f"the layer's output holds no tensor (got {type(output).__name__})")
    if tensor.dim() == 3:
        if num_prefix_tokens < 0 or num_prefix_tokens >= tensor.shape[1]:
            raise ValueError(f"num_prefix_tokens = {num_prefix_tokens} leaves no tokens of the layer's "
                             f"{tensor.shape[1]}")
        return tensor[:, num_prefix_tokens:]
    if tensor.dim() == 4:
        if channels_last:  # (B, H, W, C)
            return tensor.flatten(1, 2)
        return tensor.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
    raise ValueError(f"cannot read dense features from a {tensor.dim()}-d output of shape {tuple(tensor.shape)}: "
                     "expected tokens (B, L, d) or a feature map (B, C, H, W)")


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _is_timm_like(model: nn.Module) -> bool:
    return callable(getattr(model, "forward_intermediates", None))


class FeatureExtractor:
    """Reusable dense-feature reader for one model and layer (see the module docs for the rules).

    Args:
        model: the network; it is not moved, and its train/eval mode is left as it is.
        layer: ``None`` (the last block/stage), an ``int`` block/stage index for timm models
            (negative counts from the end), or a dotted submodule name (any model).
        norm: timm models only: apply the final norm (as the model's own head input has it).
        num_prefix_tokens: tokens to drop from a 3-d output read by name (default: the model's
            ``num_prefix_tokens`` attribute, else 0).
        channels_last: read a 4-d output by name as ``(B, H, W, C)``.

    Calling it with images ``(B, 3, H, W)`` returns ``(B, N, d)``. Gradients flow unless the call
    is made under ``torch.no_grad()``.
    """

    def __init__(self, model: nn.Module, layer: int | str | None = None, *, norm: bool = True,
                 num_prefix_tokens: int | None = None, channels_last: bool = False):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if layer is not None and not isinstance(layer, (int, str)):
            raise TypeError(f"layer must be None, an int or a dotted module name, got {type(layer).__name__}")
        self.model = model
        self.layer = layer
        self.norm = norm
        self.channels_last = channels_last
        if num_prefix_tokens is None:
            num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.num_prefix_tokens = num_prefix_tokens
        if isinstance(layer, str):
            try:
                self._module = model.get_submodule(layer)
            except AttributeError:
                names = [n for n, _ in model.named_modules() if n][:12]
                raise ValueError(f"model has no submodule {layer!r}; some of its modules: {names}") from None
        elif isinstance(layer, int) and not _is_timm_like(model):
            raise ValueError("an integer layer needs a timm model (with forward_intermediates); name the layer "
                             "by its dotted module path instead")
        self._nlc = True  # try timm's token output format first; CNNs and Swin only have NCHW

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}")
        if isinstance(self.layer, str):
            return self._by_hook(images)
        if _is_timm_like(self.model):
            return self._by_timm(images)
        return self._by_forward_features(images)

    def with_embeddings(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (B, N, d), embeddings (B, e))``: the dense features and the image-level
        embeddings of the same forward pass. Embeddings are the model's pooled pre-logits output
        (timm: ``forward_head(final features, pre_logits=True)``: the class token of a ViT with
        token pooling, the global average of a CNN), whatever ``layer`` the tokens come from; for
        other models (and layers read by name) the mean of the patch tokens."""
        if isinstance(self.layer, str) or not _is_timm_like(self.model) or \
                not callable(getattr(self.model, "forward_head", None)):
            tokens = self(images)
            return tokens, tokens.mean(dim=1)
        index = -1 if self.layer is None else self.layer
        kwargs = dict(indices=[index], norm=self.norm, intermediates_only=False)
        if self._nlc:
            try:
                final, (out,) = self.model.forward_intermediates(images, output_fmt="NLC", **kwargs)
                return out, self.model.forward_head(final, pre_logits=True)
            except AssertionError:
                self._nlc = False
        final, (out,) = self.model.forward_intermediates(images, output_fmt="NCHW", **kwargs)
        return tokens_from_output(out), self.model.forward_head(final, pre_logits=True)

    def _by_timm(self, images: torch.Tensor) -> torch.Tensor:
        index = -1 if self.layer is None else self.layer
        kwargs = dict(indices=[index], norm=self.norm, stop_early=True, intermediates_only=True)
        if self._nlc:
            try:
                (out,) = self.model.forward_intermediates(images, output_fmt="NLC", **kwargs)
                return out  # prefix tokens already removed by timm
            except AssertionError:  # this architecture only returns NCHW maps
                self._nlc = False
        (out,) = self.model.forward_intermediates(images, output_fmt="NCHW", **kwargs)
        return tokens_from_output(out)

    def _by_forward_features(self, images: torch.Tensor) -> torch.Tensor:
        forward = getattr(self.model, "forward_features", self.model)
        return tokens_from_output(forward(images), num_prefix_tokens=self.num_prefix_tokens,
                                  channels_last=self.channels_last)

    def _by_hook(self, images: torch.Tensor) -> torch.Tensor:
        captured = []

        def hook(module, args, output):
            captured.append(output)
            raise _StopForward

        handle = self._module.register_forward_hook(hook)
        try:
            self.model(images)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"layer {self.layer!r} did not run in the model's forward")
        return tokens_from_output(captured[0], num_prefix_tokens=self.num_prefix_tokens,
                                  channels_last=self.channels_last)


def dense_features(model: nn.Module, images: torch.Tensor, layer: int | str | None = None, *, norm: bool = True,
                   num_prefix_tokens: int | None = None, channels_last: bool = False) -> torch.Tensor:
    """Patch features ``(B, N, d)`` of ``images`` ``(B, 3, H, W)`` at ``layer`` of ``model``.

    One-shot form of :class:`FeatureExtractor` (same arguments). Example::

        model = timm.create_model("vit_small_patch16_224", num_classes=0).eval()
        with torch.no_grad():
            tokens = dense_features(model, images)          # (B, 196, 384): last block, normed
            mid = dense_features(model, images, layer=5)    # after block 5
    """
    return FeatureExtractor(model, layer, norm=norm, num_prefix_tokens=num_prefix_tokens,
                            channels_last=channels_last)(images)
