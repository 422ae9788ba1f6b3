"""Preemption: SIGUSR1/SIGTERM (and a wall-clock limit) end a run cleanly at a step boundary.

A handler only sets a flag; the trainer all-reduces the flag with the step's loss so every
rank agrees on the same step, saves a checkpoint and exits with REQUEUE_EXIT_CODE, which the
SLURM wrapper turns into `scontrol requeue`; the next run resumes with `--resume auto`.
"""
from __future__ import annotations

import signal
import time

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"


class StopFlag:
    def __init__(self, time_limit_minutes: float = 0.0, margin_seconds: float = 0.0):
        self.requested = False
        self.reason = ""
        self.deadline = (time.monotonic() + time_limit_minutes * 60 - margin_seconds) if time_limit_minutes > 0 else None

    def install(self) -> StopFlag:
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        self.requested = True
        self.reason = signal.Signals(signum).name

    def local(self) -> bool:
        """This rank's vote: a signal arrived, or the time limit is near."""
        if self.deadline is not None and time.monotonic() >= self.deadline and not self.requested:
            self.requested, self.reason = True, "time limit"
        return self.requested
