"""Dense features from timm models (random init) and from any module by layer name."""

import pytest
import torch
from torch import nn

from dse_ext.features import FeatureExtractor, dense_features, tokens_from_output

timm = pytest.importorskip("timm")


def vit(**kw):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                             **kw).eval()


@pytest.fixture
def images(gen):
    return torch.randn(2, 3, 32, 32, generator=gen)


def test_vit_last_block_after_the_final_norm_without_prefix_tokens(images):
    model = vit(reg_tokens=4)  # 1 class + 4 register tokens
    assert model.num_prefix_tokens == 5
    with torch.no_grad():
        tokens = dense_features(model, images)
        expected = model.forward_features(images)[:, 5:]  # forward_features ends with the final norm
    assert tokens.shape == (2, 16, 192)
    torch.testing.assert_close(tokens, expected)


def test_vit_other_block_by_index_and_by_name(images):
    model = vit()
    with torch.no_grad():
        by_index = dense_features(model, images, layer=3, norm=False)
        by_name = dense_features(model, images, layer="blocks.3")  # hook: raw block output, class token dropped
        last = dense_features(model, images)
    torch.testing.assert_close(by_index, by_name)
    assert not torch.allclose(by_index, last)


@pytest.mark.parametrize("name,kw,tokens,dim", [
    ("resnet18", {}, 4, 512),
    ("convnext_atto", {}, 4, 320),
    ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 2}, 4, 768),
])
def test_cnn_and_swin_last_stage_flattened(gen, name, kw, tokens, dim):
    model = timm.create_model(name, pretrained=False, num_classes=0, **kw).eval()
    x = torch.randn(2, 3, 64, 64, generator=gen)
    with torch.no_grad():
        out = dense_features(model, x)
        (stage,) = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)
    assert out.shape == (2, tokens, dim)
    torch.testing.assert_close(out, stage.flatten(2).transpose(1, 2))  # (B, C, H, W) -> (B, H*W, C)


def test_any_module_by_name_stops_the_forward_there(gen):
    calls = []

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2, padding=1))
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            y = self.body(self.stem(x))
            calls.append("head")
            return self.head(y.mean((2, 3)))

    net = Net()
    x = torch.randn(2, 3, 8, 8, generator=gen)
    out = dense_features(net, x, layer="body.1")
    assert out.shape == (2, 16, 6) and not calls  # the head never ran
    torch.testing.assert_close(out, net.body(net.stem(x)).flatten(2).transpose(1, 2))
    out.sum().backward()  # gradients flow without no_grad
    assert net.stem.weight.grad is not None


def test_reshape_rule():
    t = torch.arange(2 * 5 * 3.0).view(2, 5, 3)
    assert torch.equal(tokens_from_output(t, num_prefix_tokens=1), t[:, 1:])
    nhwc = torch.randn(2, 4, 4, 7)
    assert torch.equal(tokens_from_output(nhwc, channels_last=True), nhwc.reshape(2, 16, 7))
    assert torch.equal(tokens_from_output((t, "x")), t)
    with pytest.raises(ValueError, match="2-d output"):
        tokens_from_output(torch.randn(2, 3))
    with pytest.raises(ValueError, match="leaves no tokens"):
        tokens_from_output(t, num_prefix_tokens=5)
    with pytest.raises(TypeError, match="no tensor"):
        tokens_from_output(["a"])


def test_bad_arguments(images):
    model = vit()
    with pytest.raises(ValueError, match="no submodule 'blocks.99'"):
        FeatureExtractor(model, "blocks.99")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        dense_features(model, images[0])
    with pytest.raises(ValueError, match="needs a timm model"):
        FeatureExtractor(nn.Conv2d(3, 4, 1), 2)
    with pytest.raises(TypeError, match="nn.Module"):
        FeatureExtractor(lambda x: x)
