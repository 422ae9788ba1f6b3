"""Preemption: SIGUSR1/SIGTERM (and a wall-clock limit) end a run cleanly at a step boundary.

A handler only sets a flag; the trainer all-reduces the flag with the step's loss so every
rank agrees on the same step, saves a checkpoint and exits with REQUEUE_EXIT_CODE, which the
SLURM wrapper turns into `scontrol requeue`; the next run resumes with `--resume auto`.

The time limit is not "stop at the limit": the rank must still finish the step it starts and
write a checkpoint before the scheduler kills it. So a rank votes to stop as soon as
    now + (slowest recent step) + 1.5 x (slowest save so far) + margin  >=  deadline
where the step and save durations are measured by the trainer as it goes (`observe_step`,
`observe_save`) and the margin (default min(60 s, 5% of the limit)) covers what is not yet
measured, e.g. the first save.

Ranks agree on the reason as well as on the flag: the stop votes travel as one count per
reason (SIGTERM, SIGUSR1, time limit) in the step's all-reduce, and every rank records the
first reason any rank voted for. `install_early` (called first thing by `python -m train`,
before torch is imported) catches a signal that arrives while the process is still starting;
`ignore_late_signals` (after the run) keeps a second signal, or the launcher's repeat, from
killing a process that has already saved: Python resets its own handlers to the default
action while it shuts down, but leaves ignored signals ignored.

Under torchrun the exit code of a worker is lost (torchrun reports 1 for any failure), so
rank 0 also writes `<run>/exit.json` (`write_exit_record`); the launcher reads it to turn
torchrun's exit status back into REQUEUE_EXIT_CODE.
"""
from __future__ import annotations

import json
import os
import signal
import time
from collections import deque
from pathlib import Path

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"
EXIT_RECORD = "exit.json"
REASONS = ("SIGTERM", "SIGUSR1", "time limit")   # vote order; the first one any rank voted for wins
_early: list[str] = []                            # a signal caught before the trainer's StopFlag existed


def _early_handler(signum, frame) -> None:
    _early.append(signal.Signals(signum).name)


def install_early() -> None:
    """Catch SIGTERM/SIGUSR1 from the very start of the process; StopFlag.install adopts them."""
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, _early_handler)


def ignore_late_signals() -> None:
    """After the run: a late SIGTERM/SIGUSR1 must not turn a clean exit into a kill."""
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def default_margin(time_limit_minutes: float) -> float:
    return min(60.0, 0.05 * time_limit_minutes * 60)


class StopFlag:
    """This rank's stop vote: a signal arrived, or the time limit leaves no room for another step + save."""

    def __init__(self, time_limit_minutes: float = 0.0, margin_seconds: float | None = None):
        self.requested = False
        self.reason = ""
        self.margin = default_margin(time_limit_minutes) if margin_seconds is None else margin_seconds
        self.deadline = (time.monotonic() + time_limit_minutes * 60) if time_limit_minutes > 0 else None
        self.recent_steps: deque[float] = deque(maxlen=10)
        self.save_seconds = 0.0

    def install(self) -> StopFlag:
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handler)
        if _early and not self.requested:
            self.requested, self.reason = True, _early[0]
        return self

    def _handler(self, signum, frame) -> None:
        if not self.requested:
            self.reason = signal.Signals(signum).name
        self.requested = True

    def observe_step(self, seconds: float) -> None:
        self.recent_steps.append(seconds)

    def observe_save(self, seconds: float) -> None:
        self.save_seconds = max(self.save_seconds, seconds)

    def seconds_needed(self) -> float:
        """Time to run one more step and then save, with the safety margin."""
        step = max(self.recent_steps, default=0.0)
        return step + 1.5 * self.save_seconds + self.margin

    def local(self) -> bool:
        """This rank's vote: a signal arrived, or the time limit is near."""
        if (self.deadline is not None and not self.requested
                and time.monotonic() + self.seconds_needed() >= self.deadline):
            self.requested, self.reason = True, "time limit"
        return self.requested

    def votes(self):
        """This rank's vote as one count per reason (REASONS), to be summed over ranks (a float64 tensor)."""
        import torch  # not at module level: `python -m train` imports this module before torch

        stop = self.local()
        return torch.tensor([float(stop and self.reason == r) for r in REASONS], dtype=torch.float64)

    def agree(self, summed) -> bool:
        """Whether any rank voted to stop; if so every rank takes the same (first voted) reason."""
        for reason, count in zip(REASONS, summed.tolist()):
            if count > 0:
                self.requested, self.reason = True, reason
                return True
        return False


def write_exit_record(run_dir: str | Path, exit_code: int, step: int, reason: str) -> None:
    """<run>/exit.json: how the last run ended (read by `python -m launch` and `launch status`)."""
    path = Path(run_dir) / EXIT_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{EXIT_RECORD}.tmp")
    if exit_code == REQUEUE_EXIT_CODE and not reason:
        reason = "stop requested by another rank (signal or time limit)"
    record = {"exit_code": exit_code, "step": step, "reason": reason if exit_code else "finished",
              "requeue": exit_code == REQUEUE_EXIT_CODE, "time": time.time(),
              "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
              "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT", "")}
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, path)


def record_failure(run_dir: str | Path, exit_code: int, exc: BaseException, step: int = -1) -> None:
    """exit.json for a run that ended with an exception (rank 0 only), so `launch status` never
    reports an earlier run's "finished" for a run that crashed. Only the process holding the run's
    lock writes it: a run refused because another holds the directory must not touch its record."""
    from train.runlock import holds

    if not holds(run_dir):
        return
    kind = "error" if exit_code == 2 else "crashed"
    message = (str(exc).strip().splitlines() or [""])[0][:500]
    try:
        write_exit_record(run_dir, exit_code, step, f"{kind}: {type(exc).__name__}: {message}")
    except OSError:
        pass                                  # a read-only run_dir: the error message says so already


def read_exit_record(run_dir: str | Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / EXIT_RECORD).read_text())
    except (OSError, ValueError):
        return None
