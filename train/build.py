"""Building a run: device, parallel layout, model, engine, loader and the [lengthgen] hooks.

`build_run(cfg)` returns a Run, the handful of objects the step (train/step.py) and the loop
(train/loop.py) use; nothing in it is rebuilt or replaced later.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

import models
from data.errors import DataError
from data.loader import build_loader, possible_lengths
from data.protocol import Loader
from kernels.dispatch import use_kernels
from parallel import Engine, EngineOptions, parallelize
from parallel.layout import ParallelState, setup_parallel
from train.config import Config, ConfigError
from train.length_gen import LengthGen, build_length_gen
from train.optim import build_optimizer
from train.plan import check_memory
from train.preemption import StopFlag


@dataclass
class Run:
    cfg: Config
    device: torch.device
    pstate: ParallelState
    engine: Engine
    loader: Loader
    length_gen: LengthGen | None
    stop: StopFlag
    n_params: int
    flops_by_len: dict[int, float]      # model FLOPs per token at every row length the data can produce
    plan_line: str = ""                 # the memory plan's one-line summary (train/plan.py)

    @property
    def is_main(self) -> bool:
        return self.pstate.rank == 0


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device='cuda' but no CUDA device is visible; use train.device=cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def engine_options(cfg: Config) -> EngineOptions:
    """The typed settings parallel/ acts on, from the [parallel], [train], [data] and [optim] sections."""
    p, t = cfg.parallel, cfg.train
    return EngineOptions(engine=p.engine, zero_stage=p.zero_stage, pp_schedule=p.pp_schedule,
                         pp_microbatches=p.pp_microbatches, seq_len=cfg.data.seq_len,
                         micro_batch_size=cfg.data.batch_size, grad_accum=t.grad_accum, grad_clip=cfg.optim.grad_clip,
                         activation_checkpointing=t.activation_checkpointing, checkpoint_policy=t.checkpoint_policy,
                         compile=t.compile, loss_chunk=t.loss_chunk, float8=t.float8,
                         bf16=wants_bf16(t.dtype, t.device))


def wants_bf16(dtype: str, device: str) -> bool:
    """bf16 compute: asked for by name (train.dtype=bfloat16, on CPU too), or dtype=auto on a GPU."""
    gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return dtype == "bfloat16" or (dtype == "auto" and gpu)


def build_model(cfg: Config, device: torch.device, sp: int):
    """The model on `device`, its parameter count and FLOPs per token for every possible row length."""
    model = models.build(cfg.model)
    model = model.to(device=device, dtype=torch.float64 if cfg.train.dtype == "float64" else torch.float32)
    # curricula change the row length per step; MFU uses the FLOPs of the length actually trained
    flops_by_len = {n: models.flops_per_token(model, n) for n in {cfg.data.seq_len, *possible_lengths(cfg.data)}}
    if any(n % sp for n in flops_by_len):
        raise DataError(f"the data's row lengths {sorted(flops_by_len)} must all be multiples of parallel.sp="
                        f"{sp}; make data.curriculum_len_step / data.dd_min_len a multiple of it")
    return model, sum(p.numel() for p in model.parameters()), flops_by_len


def build_data(cfg: Config, engine: Engine, pstate: ParallelState) -> tuple[Loader, LengthGen | None]:
    """The loader (the row-stream loader under lengthgen.tbptt) and the [lengthgen] forward hooks."""
    length_gen = build_length_gen(cfg, engine.module, pstate)
    if cfg.lengthgen.tbptt:
        from data.row_streams import build_row_stream_loader

        loader = build_row_stream_loader(cfg.data, pstate.dp_rank, pstate.dims.dp)
    else:
        loader = build_loader(cfg.data, pstate.dp_rank, pstate.dims.dp)
    if loader.vocab_size > cfg.model.vocab_size:
        raise DataError(f"the data (data.source={cfg.data.source}, {cfg.data.path or 'data.sources'}) has "
                        f"{loader.vocab_size} token ids but model.vocab_size is "
                        f"{cfg.model.vocab_size}; set model.vocab_size >= {loader.vocab_size}")
    return loader, length_gen


def build_run(cfg: Config) -> Run:
    device = resolve_device(cfg.train.device, int(os.environ.get("LOCAL_RANK", "0")))
    stop = StopFlag(cfg.train.time_limit).install()   # first: a signal during set-up must not kill the rank
    use_kernels(cfg.train.kernels)                    # this process's kernel paths (LONGWEAVE_KERNELS wins)
    pstate = setup_parallel(cfg.parallel, cfg.model, cfg.data.batch_size, device)
    plan_line = check_memory(cfg, pstate.world, device)    # before any allocation: a misfit is one line
    if pstate.rank == 0:
        print(plan_line, flush=True)
    torch.manual_seed(cfg.train.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    model, n_params, flops_by_len = build_model(cfg, device, pstate.dims.sp)
    engine = parallelize(model, pstate, engine_options(cfg), device,
                         lambda module: build_optimizer(module, cfg.optim, device))
    loader, length_gen = build_data(cfg, engine, pstate)
    return Run(cfg, device, pstate, engine, loader, length_gen, stop, n_params, flops_by_len, plan_line)
