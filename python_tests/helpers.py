"""Test data helpers."""

import torch


def clustered(gen, P, M, d, k, spread=0.05, dtype=torch.float64):
    """P problems of M points around k well separated centres; returns points and true labels."""
    centres = torch.randn(P, k, d, generator=gen, dtype=dtype) * 3
    labels = torch.arange(M).remainder(k).repeat(P, 1)
    labels = torch.stack([row[torch.randperm(M, generator=gen)] for row in labels])
    x = torch.gather(centres, 1, labels[..., None].expand(P, M, d))
    return x + spread * torch.randn(P, M, d, generator=gen, dtype=dtype), labels
