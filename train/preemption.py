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


def read_exit_record(run_dir: str | Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / EXIT_RECORD).read_text())
    except (OSError, ValueError):
        return None
