"""The few torch.distributed helpers checkpoint scoring needs (all no-ops in a single process)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "rank", "world_size", "barrier", "all_gather_objects", "init_from_env"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, …]`` on every rank (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def init_from_env(device: str) -> tuple[bool, str]:
    """Joins the process group that ``torchrun`` describes in the environment, if any.

    Returns ``(initialized_here, device)``: with ``device="cuda"`` each rank gets its local GPU
    (``cuda:LOCAL_RANK``) and NCCL; otherwise gloo.
    """
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False, device
    use_cuda = device.startswith("cuda")
    if use_cuda and device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True, device
