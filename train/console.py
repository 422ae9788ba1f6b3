"""What rank 0 prints while it trains: step lines, checkpoint lines, a summary, a progress bar.

One step's time swings several-fold on a shared machine (other jobs, a save, the first step's
warm-up), so throughput is averaged over the steps since the previous console line and the ETA
comes from that average. On a terminal a progress bar (tqdm) stays at the bottom and the step
lines scroll above it; in a log file (not a TTY) there are only the plain lines, unchanged in
format: `step      N/TOTAL | loss ... | lr ... | grad ... | X tok/s/dev | eta ...`.
"""
from __future__ import annotations

import sys
import time


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def format_duration(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else format_eta(seconds)


class Interval:
    """Tokens and seconds since the last console line; the rate and ETA come from these."""

    def __init__(self):
        self.tokens, self.seconds, self.steps = 0, 0.0, 0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds
        self.steps += 1

    def tokens_per_sec(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def eta(self, steps_left: int) -> float:
        return self.seconds / self.steps * steps_left if self.steps else 0.0

    def reset(self) -> None:
        self.__init__()


def _progress_bar(total: int, first_step: int):
    """A tqdm bar on a terminal; None in logs, or without tqdm."""
    if not sys.stdout.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=first_step, unit="step", dynamic_ncols=True, leave=False, file=sys.stdout)


class Console:
    """Rank 0's console (every method is a no-op elsewhere).

    `log` is where lines go (print for the CLI, a list's append in tests); the progress bar is
    only drawn when `log` is print and stdout is a terminal.
    """

    def __init__(self, log, total: int, first_step: int, model_parallel: int, is_main: bool, dp: int = 1):
        self.total, self.model_parallel, self.is_main, self.dp = total, model_parallel, is_main, dp
        self.first_step = first_step
        self.interval = Interval()
        self.tokens_run, self.t_start = 0, time.perf_counter()
        self.bar = _progress_bar(total, first_step) if (is_main and log is print) else None
        self._log = log

    def log(self, line: str) -> None:
        """One line: above the progress bar when there is one."""
        if self.bar is not None:
            self.bar.write(line)
        else:
            self._log(line)

    def step(self, step: int, tokens: int, seconds: float, loss: float, lr: float, grad_norm: float,
             due: bool) -> None:
        """After every step (`tokens`: what this rank loaded); prints the step line when `due`."""
        if not self.is_main:
            return
        self.interval.add(tokens, seconds)
        self.tokens_run += tokens
        tps = self.interval.tokens_per_sec() / self.model_parallel
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"loss {loss:.4f} | {tps:,.0f} tok/s/dev", refresh=False)
        if due:
            self.log(f"step {step:>6}/{self.total} | loss {loss:.4f} | lr {lr:.2e} | grad {grad_norm:.3f} "
                     f"| {tps:,.0f} tok/s/dev | eta {format_eta(self.interval.eta(self.total - step))}")
            self.interval.reset()

    def checkpoint(self, path, seconds: float) -> None:
        if self.is_main:
            self.log(f"checkpoint: {path} ({seconds:.1f}s)")

    def summary(self, final_step: int, losses: list[float], run_dir, checkpoint, tensorboard: bool) -> None:
        """The end-of-run lines: final loss, steps and tokens of this call, time, where things are."""
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if not losses:
            return
        elapsed = time.perf_counter() - self.t_start
        self.log(f"done: step {final_step}/{self.total} | final loss {losses[-1]:.4f} | {len(losses)} steps, "
                 f"{self.tokens_run * self.dp:,} tokens in {format_duration(elapsed)}")
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint saved"
        tb = f"; TensorBoard: tensorboard --logdir {run_dir}/tb" if tensorboard else ""
        self.log(f"run directory {run_dir}: {where}{tb}")
