"""What a run reports after each step, each on its own cadence: the step log (every step), the
console (train/console.py: a step line every train.log_every, the first and last step and at a
stop, a line per checkpoint, a summary), TensorBoard / W&B scalars (every train.log_every and the
last step) and the recurrent state norms (the state-collapse watch).
"""
from __future__ import annotations

from pathlib import Path

from train.build import Run
from train.console import Console
from train.metrics import StepLog, max_memory_gb, peak_flops
from train.step import StepOutput


class Reporter:
    def __init__(self, run: Run, log, config_toml: str, first_step: int, tb):
        """`tb`: the scalar/text/image logger (train/wandb_log.py build_loggers: TensorBoard and/or W&B)."""
        cfg = run.cfg
        self.run, self.log, self.total = run, log, cfg.train.steps
        self.run_dir = Path(cfg.train.run_dir)
        self.tb = tb
        self.step_log = StepLog(self.run_dir, run.is_main)
        self.tb.text("config", "```\n" + config_toml + "\n```", first_step)
        describe = getattr(run.loader, "describe", None)   # a mixture: each source's share and length histogram
        if run.is_main and describe is not None:
            mix = "\n".join(describe())
            log(mix)
            self.tb.text("data/mix", "```\n" + mix + "\n```", first_step)
        self.model_line()
        self.peak = peak_flops(run.device)
        dims = run.pstate.dims
        self.console = Console(log, self.total, first_step, dims.model_parallel, run.is_main, dims.dp)

    def model_line(self) -> None:
        run, cfg = self.run, self.run.cfg
        flops = run.flops_by_len[cfg.data.seq_len]
        if run.is_main:
            self.log(f"model: {cfg.model.pattern}  params {run.n_params / 1e6:.2f}M  {flops / 1e6:.1f} MFLOP/token  "
                     f"world {run.pstate.world} (dp {run.pstate.dims.dp})  device {run.device.type}")

    def after_step(self, step: int, out: StepOutput) -> None:
        self.step_log.write(step, loss=out.loss, lr=out.lr, grad_norm=out.grad_norm)
        every = self.run.cfg.train.log_every
        self.console.step(step, out.tokens, out.seconds, out.loss, out.lr, out.grad_norm,
                          due=step % every == 0 or step == self.total or step == 1 or out.stop_now)
        m = self.run.cfg.metrics
        if self.run.is_main and (m.tensorboard or m.wandb) and (step % every == 0 or step == self.total):
            self.scalars(step, out)

    def scalars(self, step: int, out: StepOutput) -> None:
        run = self.run
        tps = out.tokens / out.seconds / run.pstate.dims.model_parallel
        flops = run.flops_by_len.get(out.seq_len, run.flops_by_len[run.cfg.data.seq_len])
        self.tb.scalars(step, {
            "train/loss": out.loss, "train/lr": out.lr, "train/grad_norm": out.grad_norm,
            "perf/tokens_per_sec_per_device": tps,
            "perf/mfu": (tps * flops / self.peak) if self.peak else None,
            "perf/max_memory_gb": max_memory_gb(run.device),
            "data/seq_len": out.seq_len, "data/batch_size": out.rows,
            "data/skipped_corrupt": run.loader.skipped_documents,   # data.skip_corrupt
            "train/nonfinite_skipped": out.nonfinite_skipped,        # train.on_nonfinite=skip
            **getattr(run.loader, "tb_scalars", dict)(),   # a mixture's tokens per source so far
        })
        if run.cfg.metrics.state_norms:  # recurrent (M, R) final-state norms: the state-collapse watch
            norms = getattr(run.engine.module, "last_state_norms", None) or {}
            self.tb.scalars(step, {f"state_norm/layer_{i}": float(v) for i, v in sorted(norms.items())})

    def checkpoint(self, path: Path, seconds: float) -> None:
        self.console.checkpoint(path, seconds)

    def close(self, final_step: int, losses: list[float], last_checkpoint: Path | None) -> None:
        self.console.summary(final_step, losses, self.run_dir, last_checkpoint, self.run.cfg.metrics.tensorboard)
        self.tb.flush()
        self.tb.close()
        self.step_log.close()
