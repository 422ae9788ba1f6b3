"""An advisory lock on a run directory: two runs writing one run_dir would race for its
checkpoints, prune each other's and interleave metrics.jsonl.

`<run>/run.lock` holds the holder's host, pid and SLURM job id (JSON), and the holder keeps
an flock on it while it runs. A second run finds the lock and
- exits 2 with one line naming the holder if that holder is alive (flock held, or its pid is
  alive on this host);
- takes the lock over with a warning if the holder is gone (a killed run, a requeued job);
- takes it over silently if the holder is this very process (an earlier in-process call that raised).
Only global rank 0 locks; creating the lock file is also the first write to the run directory,
so a read-only or missing-permission run_dir fails here, as one line, before anything starts.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from train.errors import RunError

LOCK_NAME = "run.lock"
_held: dict[str, int] = {}      # lock path -> open fd, for this process


class RunLockError(RunError):
    """The run directory is held by another live run, or cannot be locked (one line, exit 2)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def acquire(run_dir: str | Path) -> Path:
    """Lock `run_dir` for this process (see the module docstring); returns the lock file's path."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunLockError(f"cannot write to the run directory {run_dir}: {os.strerror(e.errno)}; "
                           "pick a writable train.run_dir") from None
    holder = _read(path)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
          "started": time.time()}
    previous = _held.pop(str(path), None)
    if previous is not None:
        os.close(previous)          # this process held it (an earlier call that raised): take it back
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locked = True
    except OSError:
        locked = False
    alive = holder.get("pid") and holder.get("host") == me["host"] and holder["pid"] != me["pid"] \
        and _pid_alive(int(holder["pid"]))
    if not locked or alive:
        os.close(fd)
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        raise RunLockError(f"run directory {run_dir} is in use by another run ({who}); use another train.run_dir, "
                           f"or stop that run (if it is gone, delete {path})")
    if holder.get("pid") and holder.get("pid") != me["pid"]:
        print(f"warning: taking over the stale lock {path} of pid {holder['pid']} on {holder.get('host', '?')} "
              "(that run is gone)", file=sys.stderr, flush=True)
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    if not _held:
        atexit.register(_release_all)      # an error exit is not a stale lock; only a killed run leaves one
    _held[str(path)] = fd
    return path


def _release_all() -> None:
    for path in list(_held):
        release(Path(path))


def holds(run_dir: str | Path) -> bool:
    """Whether this process holds the lock on `run_dir`."""
    return str(Path(run_dir) / LOCK_NAME) in _held


def release(path: Path | None) -> None:
    """Drop the lock. The file stays (emptied): removing it would let a run that opened it just before
    lock a deleted file while a third run locks a new one."""
    if path is None:
        return
    fd = _held.pop(str(path), None)
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
