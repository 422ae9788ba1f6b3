"""Forked gloo ranks for the benchmarks: run `fn(rank, world, args)` on each, collect results."""
from __future__ import annotations

import multiprocessing as mp
import os
import socket
import traceback

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, fn, args, queue):
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        queue.put((rank, fn(rank, world, args)))
    except BaseException:
        queue.put((rank, RuntimeError(f"rank {rank}: {traceback.format_exc()}")))
    finally:
        dist.destroy_process_group()


def run_ranks(world: int, fn, args, timeout: float = 1800) -> list:
    """[fn's result for rank 0..world-1], each rank a forked process with one torch thread."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, fn, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=timeout) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    failed = [r for r in results.values() if isinstance(r, Exception)]
    if failed:
        raise failed[0]
    return [results[r] for r in range(world)]
