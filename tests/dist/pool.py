"""A pool of forked gloo workers, reused across tests (forking per test costs seconds).

    def check(rank, world, x):            # module-level, so it pickles by name
        ...                               # torch.distributed is initialised (gloo)
        return something_picklable

    results = pool.run(check, x)          # one result per rank, rank order

Workers are forked once (after pytest has imported every test module, so any module-level
function can be sent) and each has a default gloo process group of the pool's size. A task
that raises on any rank raises here with that rank's traceback; a failure or timeout marks
the pool broken and the next `get` forks a fresh one, so one bad test cannot hang the rest.

An idle gloo process group is not free: each one a worker holds costs it about a millisecond of
CPU per second (measured: 160 groups, 16 % of a core per idle worker), and tests create groups
(meshes, DeepSpeed, subgroups) that libraries cache, so they cannot be destroyed safely. A pool
whose workers hold more than MAX_GROUPS is therefore retired after the task and the next `get`
forks a fresh one (about a second), which keeps idle pools from eating the 2-core CI machine.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import socket
import traceback
from datetime import timedelta

MAX_GROUPS = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, conn) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=300))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            break
        if msg is None:
            break
        fn, args, kwargs = msg
        try:
            result = ("ok", fn(rank, world, *args, **kwargs))
        except BaseException:  # noqa: BLE001 - report everything to the parent
            result = ("err", traceback.format_exc())
        conn.send((*result, len(dist.distributed_c10d._world.pg_map)))
    dist.destroy_process_group()


class WorkerPool:
    def __init__(self, world: int):
        ctx = mp.get_context("fork")
        self.world = world
        self.broken = False
        self.retired = False            # holds too many process groups: replaced at the next `get`
        port = free_port()
        self.conns, self.procs = [], []
        for r in range(world):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(r, world, port, child), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)

    def run(self, fn, *args, timeout: float = 300.0, **kwargs) -> list:
        if self.broken:
            raise RuntimeError("worker pool is broken; get a fresh one from the registry")
        for c in self.conns:
            c.send((fn, args, kwargs))
        results, errors = [], []
        for r, c in enumerate(self.conns):
            if not c.poll(timeout):
                self.broken = True
                self.close()
                raise TimeoutError(f"rank {r} did not answer within {timeout:.0f}s running {fn.__name__}")
            status, value, n_groups = c.recv()
            self.retired = self.retired or n_groups > MAX_GROUPS
            if status == "err":
                errors.append(f"--- rank {r} ---\n{value}")
                results.append(None)
            else:
                results.append(value)
        if errors:
            self.broken = True
            self.close()
            raise RuntimeError(f"{fn.__name__} failed:\n" + "\n".join(errors))
        return results

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(None)
            except (BrokenPipeError, OSError):
                pass
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        self.conns, self.procs = [], []


class PoolRegistry:
    """One live pool per world size, created on first use, replaced when broken or retired."""

    replaced = 0                        # pools retired for their process groups (printed at the end)

    def __init__(self):
        self.pools: dict[int, WorkerPool] = {}

    def get(self, world: int) -> WorkerPool:
        pool = self.pools.get(world)
        if pool is not None and pool.retired and not pool.broken:
            pool.close()
            PoolRegistry.replaced += 1
        if pool is None or pool.broken or pool.retired:
            pool = self.pools[world] = WorkerPool(world)
        return pool

    def close_all(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
