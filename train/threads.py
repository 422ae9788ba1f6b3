"""How many intra-op threads a training process uses.

PyTorch's default is one thread per physical core, per process. That is right on an idle
machine running one process, and badly wrong otherwise: with several ranks on one machine, or
other jobs on a shared one, OpenMP threads wait on each other at every parallel region and a
step can take 10-30x longer than with one thread. So each process picks its own count:

    threads = max(1, min(usable cores, idle cores now) // processes on this machine)

- usable cores: the CPUs this process may run on (`os.sched_getaffinity`; SLURM and taskset
  shrink it), not the machine's count;
- processes on this machine: `LOCAL_WORLD_SIZE` (set by torchrun), 1 otherwise;
- idle cores now: sampled from /proc/stat over a fraction of a second at start-up, so a machine
  that is already busy gets fewer threads (Linux only; elsewhere every usable core counts as idle).

`train.threads = N` (N > 0) overrides the choice; so does `OMP_NUM_THREADS` when this is not a
torchrun worker (torchrun sets it to 1 for every worker, which ignores the machine's size).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ThreadChoice:
    threads: int
    reason: str            # why this many, for the start-up line

    def line(self) -> str:
        return f"threads: {self.threads} intra-op per process ({self.reason})"


def usable_cores() -> int:
    """CPUs this process may be scheduled on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):   # not Linux
        return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies summed over all CPUs, or None where /proc/stat is unavailable."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields[:8]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)   # idle + iowait
    return idle, sum(values)


def idle_cores(window_s: float = 0.25) -> float | None:
    """Cores of the whole machine that were idle during the last `window_s` seconds (None: unknown)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(window_s)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    fraction = (second[0] - first[0]) / (second[1] - first[1])
    return fraction * (os.cpu_count() or 1)


def local_world_size() -> int:
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


MEASURE = object()   # choose_threads(idle=MEASURE): sample /proc/stat now


def choose_threads(requested: int = 0, cores: int | None = None, idle=MEASURE,
                   local_world: int | None = None, env: dict | None = None) -> ThreadChoice:
    """The policy above; arguments left out are read from this machine (idle=None: unknown)."""
    env = os.environ if env is None else env
    if requested < 0:
        from train.config import ConfigError

        raise ConfigError(f"train.threads={requested} must be >= 0 (0 = choose from the machine)")
    if requested > 0:
        return ThreadChoice(requested, "train.threads")
    omp = env.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0 and "LOCAL_WORLD_SIZE" not in env:
        return ThreadChoice(int(omp), "from OMP_NUM_THREADS; train.threads overrides")
    cores = usable_cores() if cores is None else cores
    local_world = local_world_size() if local_world is None else local_world
    idle = idle_cores() if idle is MEASURE else idle   # None: unknown, every usable core counts
    free = cores if idle is None else min(cores, max(1, int(idle + 0.5)))
    n = max(1, free // local_world)
    idle_txt = "" if idle is None else f", {idle:.1f} idle now"
    return ThreadChoice(n, f"auto: {cores} usable cores{idle_txt}, {local_world} process(es) on this machine; "
                           "train.threads overrides")


def configure_threads(requested: int = 0) -> ThreadChoice:
    """Choose and apply this process's intra-op thread count."""
    import torch

    choice = choose_threads(requested)
    torch.set_num_threads(choice.threads)
    return choice
