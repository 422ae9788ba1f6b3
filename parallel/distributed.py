"""Process-group set-up and the few collectives the trainer needs, safe on one process.

Backend: NCCL when training on CUDA, gloo otherwise (CPU tests, laptops). Under torchrun the
usual RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT variables are read; without
them everything runs as a single process and the collectives below become no-ops.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def init_distributed(device_type: str) -> tuple[int, int, int]:
    """Initialise the default group when launched by torchrun; returns (rank, world, local_rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not is_dist():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return rank(), world_size(), local_rank


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce(t: torch.Tensor, op=None, group=None) -> torch.Tensor:
    """In-place sum (or `op`) over the group; identity on one process."""
    if is_dist():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM, group=group)
    return t


def broadcast_object(obj, src: int = 0):
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def destroy() -> None:
    if is_dist():
        dist.destroy_process_group()
