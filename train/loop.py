"""The training loop: one function, `train(cfg)`, used by `python -m train` and by tests.

A step = grad_accum micro-batches per data-parallel rank. The loss is the mean over every
label token of the global step (all ranks, all micro-batches): each micro-batch's summed
cross-entropy is divided by the global label count, computed before the backward passes,
so the result does not depend on how tokens are split across ranks or micro-batches.
"""
from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

import models
from data.errors import DataError
from data.loader import build_loader, possible_lengths
from parallel import parallelize, wrap_engine
from parallel.distributed import all_reduce, barrier
from parallel.grad_clip import clip_gradients
from parallel.layout import setup_parallel
from train import runlock
from train.checkpoint import Checkpointer
from train.config import Config, dump_toml
from train.console import Console, format_eta  # noqa: F401  (format_eta: public helper)
from train.errors import RunError
from train.evaluate import periodic_eval
from train.layout_check import validate_run_layout
from train.length_gen import build_length_gen, build_tbptt_loader
from train.metrics import StepLog, TensorBoardLogger, max_memory_gb, peak_flops
from train.nonfinite import NonFiniteGuard
from train.optim import build_optimizer, lr_at
from train.preemption import REQUEUE_EXIT_CODE, StopFlag, write_exit_record
from train.step import forward_backward


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)   # one per step run in this call
    final_step: int = 0
    exit_code: int = 0
    run_dir: str = ""


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RunError("train.device='cuda' but no CUDA device is visible; use train.device=cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def train(cfg: Config, log=print) -> TrainResult:
    device = resolve_device(cfg.train.device, int(os.environ.get("LOCAL_RANK", "0")))
    lock = runlock.acquire(cfg.train.run_dir) if int(os.environ.get("RANK", "0")) == 0 else None
    resume_from = Checkpointer(cfg.train.run_dir, 0, 0).resolve(cfg.checkpoint.resume)   # a bad path: before any work
    stop = StopFlag(cfg.train.time_limit).install()   # first: a signal during set-up must not kill the rank
    pstate = setup_parallel(cfg, device)
    dims, rank, world = pstate.dims, pstate.rank, pstate.world
    validate_run_layout(cfg, world)        # the same check the launcher runs before starting anything
    is_main = rank == 0
    torch.manual_seed(cfg.train.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    model = models.build(cfg.model)
    param_dtype = torch.float64 if cfg.train.dtype == "float64" else torch.float32
    model = model.to(device=device, dtype=param_dtype)
    seq_len = cfg.data.seq_len
    flops_tok = models.flops_per_token(model, seq_len)
    # curricula change the row length per step; MFU uses the FLOPs of the length actually trained
    flops_by_len = {n: models.flops_per_token(model, n) for n in possible_lengths(cfg.data)}
    n_params = sum(p.numel() for p in model.parameters())
    model = parallelize(model, pstate, cfg, device)
    optimizer = build_optimizer(model, cfg.optim, device)
    model, optimizer = wrap_engine(model, optimizer, pstate, cfg)
    loader = build_loader(cfg.data, pstate.dp_rank, dims.dp)
    pstate.length_gen = build_length_gen(cfg, model, pstate)
    if cfg.lengthgen.tbptt:
        loader = build_tbptt_loader(cfg, pstate.dp_rank, dims.dp)
    if getattr(loader, "vocab_size", 0) > cfg.model.vocab_size:
        raise DataError(f"the shards' tokenizer has {loader.vocab_size} ids but model.vocab_size is "
                        f"{cfg.model.vocab_size}; set model.vocab_size >= {loader.vocab_size}")
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if device.type == "cuda" and cfg.train.dtype in ("auto", "bfloat16") else nullcontext())

    run_dir = Path(cfg.train.run_dir)
    ckpt = Checkpointer(run_dir, cfg.checkpoint.keep_last, rank)
    config_toml = dump_toml(cfg)
    step = 0
    if resume_from is not None:
        state = ckpt.load(resume_from, model, optimizer, cfg.model, cfg.checkpoint.allow_model_change)
        step = int(state["step"])
        if state.get("data") is not None:      # None: an imported model's step-0 checkpoint
            loader.load_state_dict(state["data"])
        if pstate.length_gen is not None and "length_gen" in ckpt.rank_state:
            if ckpt.rank_state.get("world") == world:
                pstate.length_gen.load_state_dict(ckpt.rank_state["length_gen"], device)
            elif is_main:
                log(f"world size changed ({ckpt.rank_state.get('world')} -> {world}): the [lengthgen] carried "
                    "state starts again from the configured initial state")
        if is_main:
            log(f"resumed from {resume_from} at step {step}")
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(config_toml)
    tb = TensorBoardLogger(run_dir, cfg.metrics.tensorboard and is_main)
    step_log = StepLog(run_dir, is_main)
    tb.text("config", "```\n" + config_toml + "\n```", step)
    if is_main and hasattr(loader, "describe"):     # a mixture: each source's share and length histogram
        mix = "\n".join(loader.describe())
        log(mix)
        tb.text("data/mix", "```\n" + mix + "\n```", step)
    if is_main:
        log(f"model: {cfg.model.pattern}  params {n_params / 1e6:.2f}M  {flops_tok / 1e6:.1f} MFLOP/token  "
            f"world {world} (dp {dims.dp})  device {device.type}")

    def save(at_step: int) -> None:
        t_save = time.perf_counter()
        rank_state = ({"world": world, "length_gen": pstate.length_gen.state_dict()}
                      if pstate.length_gen is not None else None)
        ckpt.save(at_step, model, optimizer, {"step": at_step, "data": loader.state_dict()}, config_toml, rank_state)
        stop.observe_save(time.perf_counter() - t_save)   # the time limit keeps room for the final save
        console.checkpoint(ckpt.dir / f"step-{at_step:07d}", time.perf_counter() - t_save)

    peak = peak_flops(device)
    result = TrainResult(run_dir=str(run_dir))
    total = cfg.train.steps
    console = Console(log, total, step, dims.model_parallel, is_main, dims.dp)
    nonfinite = NonFiniteGuard(cfg.train.on_nonfinite, cfg.train.max_nonfinite)
    while step < total:
        t0 = time.perf_counter()
        lr = lr_at(step, total, cfg.optim)
        for group in optimizer.param_groups:
            group["lr"] = lr
        full = [loader.next_batch() for _ in range(cfg.train.grad_accum)]
        # curricula vary row length and count per step: log what this step really holds
        seq_len, batch_rows = full[0].shape[1], full[0].shape[0]
        tokens_per_step_device = sum(b.tokens.numel() for b in full)
        batches = [b.seq_slice(pstate.sp_rank, dims.sp).to(device) for b in full]
        counts = float(pstate.is_loss_rank) * sum(b.num_label_tokens() for b in batches)
        global_count = int(all_reduce(torch.tensor([counts], dtype=torch.float64)).item())
        loss_sum = forward_backward(model, batches, pstate, global_count, autocast)
        grad_norm = clip_gradients(model, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"), pstate)
        if not nonfinite.skip_step(step + 1, loss_sum, grad_norm):   # every rank agrees (train/nonfinite.py)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        # one all-reduce carries the loss and every rank's stop vote
        stats = all_reduce(torch.cat([(loss_sum * float(pstate.is_loss_rank)).reshape(1), stop.votes()]))
        loss = stats[0].item() / max(1, global_count)
        stop_now = stop.agree(stats[1:])                 # the same step and the same reason on every rank
        result.losses.append(loss)
        dt = time.perf_counter() - t0
        stop.observe_step(dt)
        step_log.write(step, loss=loss, lr=lr, grad_norm=float(grad_norm))
        console.step(step, tokens_per_step_device, dt, loss, lr, float(grad_norm),
                     due=step % cfg.train.log_every == 0 or step == total or step == 1 or stop_now)
        if is_main and cfg.metrics.tensorboard and (step % cfg.train.log_every == 0 or step == total):
            tps = tokens_per_step_device / dt / dims.model_parallel
            tb.scalars(step, {
                "train/loss": loss, "train/lr": lr, "train/grad_norm": float(grad_norm),
                "perf/tokens_per_sec_per_device": tps,
                "perf/mfu": (tps * flops_by_len.get(seq_len, flops_tok) / peak) if peak else None,
                "perf/max_memory_gb": max_memory_gb(device),
                "data/seq_len": seq_len, "data/batch_size": batch_rows,
                "data/skipped_corrupt": getattr(loader, "skipped_documents", None),   # data.skip_corrupt
                "train/nonfinite_skipped": nonfinite.skipped,                          # train.on_nonfinite
                **getattr(loader, "tb_scalars", dict)(),   # a mixture's tokens per source so far
            })
            if cfg.metrics.state_norms:  # recurrent (M, R) final-state norms: the state-collapse watch
                norms = getattr(getattr(model, "module", model), "last_state_norms", None) or {}
                tb.scalars(step, {f"state_norm/layer_{i}": float(v) for i, v in sorted(norms.items())})
        if cfg.eval.every > 0 and step % cfg.eval.every == 0:
            periodic_eval(model, cfg, step, tb, is_main, device)
        every = cfg.checkpoint.every
        if stop_now or (every > 0 and step % every == 0) or (step == total and cfg.checkpoint.save_final):
            save(step)
        if stop_now:
            if is_main:
                log(f"stopping at step {step} ({stop.reason}); checkpoint saved, exit {REQUEUE_EXIT_CODE} to requeue")
            result.exit_code = REQUEUE_EXIT_CODE
            break
    if step >= total and is_main and resume_from is not None and not result.losses:
        log(f"nothing to do: {resume_from} is at step {step} and train.steps={total}; pass a larger "
            "--train.steps to continue, or --train.run_dir for a new run")
    last = ckpt.resolve("auto") if is_main else None
    console.summary(step, result.losses, run_dir, last, cfg.metrics.tensorboard)
    tb.flush()
    tb.close()
    step_log.close()
    # torchrun hides worker exit codes, so the launcher reads exit.json; written before the
    # barrier so that it exists by the time any rank exits
    if is_main:
        write_exit_record(run_dir, result.exit_code, step, stop.reason)
    barrier()
    runlock.release(lock)
    result.final_step = step
    return result

