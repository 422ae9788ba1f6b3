"""What a run reports after each step, each on its own cadence: the step log (every step),
the console line (train.log_every, the first and last step, and a stop), TensorBoard scalars
(metrics.log_every and the last step) and the recurrent state norms (the state-collapse watch).
"""
from __future__ import annotations

import time
from pathlib import Path

from train.build import Run
from train.metrics import StepLog, TensorBoardLogger, max_memory_gb, peak_flops
from train.step import StepOutput


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Reporter:
    def __init__(self, run: Run, log, config_toml: str, first_step: int):
        cfg = run.cfg
        self.run, self.log, self.total = run, log, cfg.train.steps
        run_dir = Path(cfg.train.run_dir)
        self.tb = TensorBoardLogger(run_dir, cfg.metrics.tensorboard and run.is_main)
        self.step_log = StepLog(run_dir, run.is_main)
        self.tb.text("config", "```\n" + config_toml + "\n```", first_step)
        describe = getattr(run.loader, "describe", None)   # a mixture: each source's share and length histogram
        if run.is_main and describe is not None:
            mix = "\n".join(describe())
            log(mix)
            self.tb.text("data/mix", "```\n" + mix + "\n```", first_step)
        self.peak = peak_flops(run.device)
        self.t_start, self.steps_timed = time.perf_counter(), 0

    def model_line(self) -> None:
        run, cfg = self.run, self.run.cfg
        dims = run.pstate.dims
        flops = run.flops_by_len[cfg.data.seq_len]
        if run.is_main:
            self.log(f"model: {cfg.model.pattern}  params {run.n_params / 1e6:.2f}M  {flops / 1e6:.1f} MFLOP/token  "
                     f"world {run.pstate.world} (dp {dims.dp})  device {run.device.type}")

    def tokens_per_sec(self, out: StepOutput) -> float:
        return out.tokens / out.seconds / self.run.pstate.dims.model_parallel

    def after_step(self, step: int, out: StepOutput) -> None:
        self.steps_timed += 1
        self.step_log.write(step, loss=out.loss, lr=out.lr, grad_norm=out.grad_norm)
        if not self.run.is_main:
            return
        every = self.run.cfg.train.log_every
        if step % every == 0 or step == self.total or step == 1 or out.stop_now:
            self.console(step, out)
        m = self.run.cfg.metrics
        if m.tensorboard and (step % m.log_every == 0 or step == self.total):
            self.scalars(step, out)

    def console(self, step: int, out: StepOutput) -> None:
        avg = (time.perf_counter() - self.t_start) / self.steps_timed
        self.log(f"step {step:>6}/{self.total} | loss {out.loss:.4f} | lr {out.lr:.2e} | grad {out.grad_norm:.3f} "
                 f"| {self.tokens_per_sec(out):,.0f} tok/s/dev | eta {format_eta(avg * (self.total - step))}")

    def scalars(self, step: int, out: StepOutput) -> None:
        run, tps = self.run, self.tokens_per_sec(out)
        flops = run.flops_by_len.get(out.seq_len, run.flops_by_len[run.cfg.data.seq_len])
        self.tb.scalars(step, {
            "train/loss": out.loss, "train/lr": out.lr, "train/grad_norm": out.grad_norm,
            "perf/tokens_per_sec_per_device": tps,
            "perf/mfu": (tps * flops / self.peak) if self.peak else None,
            "perf/max_memory_gb": max_memory_gb(run.device),
            "data/seq_len": out.seq_len, "data/batch_size": out.rows,
            "data/skipped_corrupt": run.loader.skipped_documents,   # data.skip_corrupt
            **getattr(run.loader, "tb_scalars", dict)(),   # a mixture's tokens per source so far
        })
        if run.cfg.metrics.state_norms:  # recurrent (M, R) final-state norms: the state-collapse watch
            norms = getattr(run.engine.module, "last_state_norms", None) or {}
            self.tb.scalars(step, {f"state_norm/layer_{i}": float(v) for i, v in sorted(norms.items())})

    def close(self) -> None:
        self.tb.flush()
        self.tb.close()
        self.step_log.close()
