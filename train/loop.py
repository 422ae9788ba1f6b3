"""The training loop: `train(cfg)`, used by `python -m train` and by tests.

build (train/build.py) -> resume -> for each step: train_step (train/step.py), report
(train/report.py), evaluate, checkpoint -> finish. Each of reporting, evaluation and
checkpointing decides its own cadence; the loop only calls them in order.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from parallel.distributed import barrier
from train import runlock
from train.build import Run, build_run, resolve_device  # noqa: F401  (resolve_device: public helper)
from train.checkpoint import Checkpointer
from train.config import Config, dump_toml
from train.evaluate import periodic_eval
from train.layout_check import validate_run_layout
from train.nonfinite import NonFiniteGuard
from train.preemption import REQUEUE_EXIT_CODE, write_exit_record
from train.report import Reporter
from train.step import train_step
from train.wandb_log import build_loggers


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)   # one per step run in this call
    final_step: int = 0
    exit_code: int = 0
    run_dir: str = ""


class Saver:
    """Checkpoints on their cadence (checkpoint.every, the final step, a stop) with the run's state."""

    def __init__(self, run: Run, config_toml: str):
        self.run, self.config_toml = run, config_toml
        self.ckpt = Checkpointer(Path(run.cfg.train.run_dir), run.cfg.checkpoint.keep_last, run.pstate.rank)

    def due(self, step: int, stop_now: bool) -> bool:
        c = self.run.cfg.checkpoint
        return stop_now or (c.every > 0 and step % c.every == 0) or (step == self.run.cfg.train.steps and c.save_final)

    def save(self, step: int) -> tuple[Path, float]:
        """Save step `step`; returns (its directory, seconds it took)."""
        run, t_save = self.run, time.perf_counter()
        rank_state = ({"world": run.pstate.world, "length_gen": run.length_gen.state_dict()}
                      if run.length_gen is not None else None)
        self.ckpt.save(step, run.engine, {"step": step, "data": run.loader.state_dict()}, self.config_toml, rank_state)
        run.stop.observe_save(time.perf_counter() - t_save)   # the time limit keeps room for the final save
        return self.ckpt.dir / f"step-{step:07d}", time.perf_counter() - t_save

    def resume(self, log) -> tuple[int, Path | None]:
        """(step to start from, checkpoint resumed) for checkpoint.resume; (0, None) when starting fresh."""
        run = self.run
        path = self.ckpt.resolve(run.cfg.checkpoint.resume)
        if path is None:
            return 0, None
        loaded = self.ckpt.load(path, run.engine, run.cfg.model, run.cfg.checkpoint.allow_model_change)
        state = loaded.train_state
        if state.get("data") is not None:      # None: an imported model's step-0 checkpoint
            run.loader.load_state_dict(state["data"])
        self.restore_length_gen(loaded.rank_state, log)
        if run.is_main:
            log(f"resumed from {path} at step {int(state['step'])}")
        return int(state["step"]), path

    def restore_length_gen(self, saved: dict, log) -> None:
        run = self.run
        if run.length_gen is None or "length_gen" not in saved:
            return
        if saved.get("world") == run.pstate.world:
            run.length_gen.load_state_dict(saved["length_gen"], run.device)
        elif run.is_main:
            log(f"world size changed ({saved.get('world')} -> {run.pstate.world}): the [lengthgen] carried "
                "state starts again from the configured initial state")


def train(cfg: Config, log=print) -> TrainResult:
    lock = runlock.acquire(cfg.train.run_dir) if int(os.environ.get("RANK", "0")) == 0 else None
    Checkpointer(cfg.train.run_dir, 0, 0).resolve(cfg.checkpoint.resume)   # a bad --resume path: before any work
    run = build_run(cfg)
    validate_run_layout(cfg, run.pstate.world)     # the same check the launcher runs before starting anything
    config_toml = dump_toml(cfg)
    saver = Saver(run, config_toml)
    step, resumed_from = saver.resume(log)
    run_dir = Path(cfg.train.run_dir)
    if run.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(config_toml)
    report = Reporter(run, log, config_toml, step, build_loggers(run_dir, cfg, run.is_main))
    result = TrainResult(run_dir=str(run_dir))
    step = loop(run, step, saver, report, result, log)
    if step >= cfg.train.steps and run.is_main and resumed_from is not None and not result.losses:
        log(f"nothing to do: {resumed_from} is at step {step} and train.steps={cfg.train.steps}; pass a larger "
            "--train.steps to continue, or --train.run_dir for a new run")
    report.close(step, result.losses, saver.ckpt.resolve("auto") if run.is_main else None)
    # torchrun hides worker exit codes, so the launcher reads exit.json; written before the
    # barrier so that it exists by the time any rank exits
    if run.is_main:
        write_exit_record(run_dir, result.exit_code, step, run.stop.reason)
    barrier()
    runlock.release(lock)
    result.final_step = step
    return result


def loop(run: Run, step: int, saver: Saver, report: Reporter, result: TrainResult, log) -> int:
    """Steps until train.steps or a stop; returns the last step run."""
    nonfinite = NonFiniteGuard(run.cfg.train.on_nonfinite, run.cfg.train.max_nonfinite)
    while step < run.cfg.train.steps:
        out = train_step(run, step, nonfinite)
        step += 1
        result.losses.append(out.loss)
        report.after_step(step, out)
        periodic_eval(run.engine.module, run.cfg, step, report.tb, run.is_main, run.device)
        if saver.due(step, out.stop_now):
            report.checkpoint(*saver.save(step))
        if out.stop_now:
            if run.is_main:
                log(f"stopping at step {step} ({run.stop.reason}); checkpoint saved, exit {REQUEUE_EXIT_CODE} to requeue")
            result.exit_code = REQUEUE_EXIT_CODE
            break
    return step
