"""Run by test_distributed.py under torchrun (2 CPU ranks, gloo): the DSE regularizer in a DDP step.

Each rank scores its own batch (features are not gathered); DDP averages the gradients. Rank 0
checks them against the mean of the two ranks' single-process gradients and writes a JSON verdict.
"""

import json
import sys

import torch
import torch.distributed as dist
from torch import nn

import dse_ext


def encoder() -> nn.Module:
    torch_gen = torch.Generator().manual_seed(7)
    net = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 16))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=torch_gen) * 0.3)
    return net


def batch(rank: int) -> torch.Tensor:
    return torch.randn(6, 20, 12, generator=torch.Generator().manual_seed(100 + rank))  # (B, N, channels)


def grads_of(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    reg = dse_ext.DSERegularizer(weight=1.0, global_clusters=8, seed=3)
    model.zero_grad()
    reg(model(x)).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ddp = nn.parallel.DistributedDataParallel(encoder())
    reg = dse_ext.DSERegularizer(weight=1.0, global_clusters=8, seed=3)
    loss = reg(ddp(batch(rank)))
    loss.backward()
    synced = [p.grad.detach().clone() for p in ddp.module.parameters()]
    losses = [None] * world
    dist.all_gather_object(losses, float(loss.detach()))
    all_grads = [None] * world
    dist.all_gather_object(all_grads, synced)
    if rank == 0:
        single = [grads_of(encoder(), batch(r)) for r in range(world)]
        expected = [torch.stack(g).mean(0) for g in zip(*single)]
        alone = [float(dse_ext.DSERegularizer(weight=1.0, global_clusters=8, seed=3)(encoder()(batch(r))))
                 for r in range(world)]
        verdict = {
            "ranks_agree": all(torch.equal(a, b) for a, b in zip(all_grads[0], all_grads[1])),
            "mean_of_single": all(torch.allclose(a, e, rtol=1e-5, atol=1e-7) for a, e in zip(synced, expected)),
            "losses": losses, "single_losses": alone,
        }
        with open(out, "w") as f:
            json.dump(verdict, f)
    dist.barrier()  # rank 1 waits for rank 0's extra work: a peer leaving early can abort gloo's threads
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
