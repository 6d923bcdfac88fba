"""Add the DSE and DSA regularizers to an existing training loop (runs on the CPU in seconds).

A toy patch-token encoder stands in for a ViT: it maps each image to (N, d) patch tokens and a
pooled embedding. The SSL loss is a two-view InfoNCE; the regularizers are simply added to it.

    python examples/train_with_regularizers.py --steps 20
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import dse_ext


class PatchEncoder(nn.Module):
    """(B, 3, 32, 32) images → (B, 64, d) patch tokens (8 × 8 patches of 4 × 4 pixels) and (B, d) embeddings."""

    def __init__(self, d: int = 64):
        super().__init__()
        self.patchify = nn.Conv2d(3, d, kernel_size=4, stride=4)
        self.mix = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))

    def forward(self, images):
        tokens = self.patchify(images).flatten(2).transpose(1, 2)  # (B, N, d)
        tokens = tokens + self.mix(tokens)
        return tokens, tokens.mean(dim=1)


def main(steps: int = 20, batch: int = 32) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    model = PatchEncoder()
    dse_reg = dse_ext.DSERegularizer(weight=1e-3)  # loss term −β·DSE on the patch tokens
    dsa_reg = dse_ext.DSARegularizer(dim=64)  # on the pooled embeddings of the two views
    # The DSA regulator has parameters of its own: train them with the model's.
    opt = torch.optim.AdamW(list(model.parameters()) + list(dsa_reg.parameters()), lr=1e-3)

    for step in range(steps):
        images = torch.rand(batch, 3, 32, 32, generator=g)
        view1 = images + 0.1 * torch.randn(images.shape, generator=g)
        view2 = images.flip(-1) + 0.1 * torch.randn(images.shape, generator=g)
        tokens1, z1 = model(view1)
        _, z2 = model(view2)
        logits = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).t() / 0.2
        ssl_loss = F.cross_entropy(logits, torch.arange(batch))

        loss = ssl_loss + dse_reg(tokens1) + dsa_reg(z1, z2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 5 == 0 or step == steps - 1:
            print(f"step {step:3d}  ssl {ssl_loss.item():.3f}  DSE {dse_reg.last.dse.item():+.3f} "
                  f"(m_inter {dse_reg.last.m_inter.item():.3f}, m_intra {dse_reg.last.m_intra.item():.3f}, "
                  f"m_dim {dse_reg.last.m_dim.item():.3f})  DSA {dsa_reg.last['adjust'].item():.3f}")
    return {"ssl": ssl_loss.item(), "dse": dse_reg.last.dse.item()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    main(args.steps, args.batch)
