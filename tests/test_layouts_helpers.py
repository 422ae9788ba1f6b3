"""Shared helpers for the layout tests: tiny configs, a single-process reference, gathered grads.

Each helper is module-level so the forked gloo pool can run it by name.
"""
from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist

# one per pytest process (fixed at import, before the pool forks, so every rank agrees): two test runs
# at once on one machine would otherwise meet in one run directory and one refuses the other's lock
DEFAULT_RUN_DIR = os.path.join(tempfile.gettempdir(), f"longweave-layout-test-{os.getpid()}")

PATTERNS = {"transformer": "(*-)x2", "window": "W-*-", "mamba2": "M-M-", "griffin": "R-W-", "hybrid": "M-*-R-"}


def tiny_config(pattern: str = "(*-)x2", steps: int = 20, run_dir: str = "", **parallel):
    from train.config import load_config

    over = [f"--model.pattern={pattern}", "--model.d_model=32", "--model.n_heads=4", "--model.n_kv_heads=2",
            "--model.mlp_hidden=64", "--model.d_state=8", "--model.ssm_headdim=8", "--model.ssm_chunk_size=8",
            "--model.lru_heads=4", "--model.window=8", "--data.seq_len=32", "--data.batch_size=4",
            f"--train.steps={steps}", "--train.device=cpu", "--train.log_every=1000", "--optim.warmup_steps=2",
            "--metrics.tensorboard=false", "--checkpoint.every=0", "--checkpoint.save_final=false",
            "--checkpoint.resume=none", f"--train.run_dir={run_dir or DEFAULT_RUN_DIR}"]
    over += [f"--parallel.{k}={v}" for k, v in parallel.items()]
    return load_config(None, over)


def apply_overrides(cfg, overrides: list[str]):
    from train.config import set_key

    for o in overrides:
        k, v = o.lstrip("-").split("=", 1)
        set_key(cfg, k, v, from_cli=True)
    return cfg


def train_losses(rank, world, cfg) -> list[float]:
    from train.loop import train

    return train(cfg, log=lambda *_: None).losses


def full_grads(model) -> dict[str, torch.Tensor]:
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in model.named_parameters():
        name = name.removeprefix("module.").replace("_orig_mod.", "")
        g = p.grad
        if g is None:
            continue
        out[name] = (g.full_tensor() if isinstance(g, DTensor) else g).detach().clone()
    return out


def one_step_grads(rank, world, cfg, batch_seed: int = 0):
    """(summed loss over the world, {param: full gradient}) after one forward/backward."""
    import models
    from data.loader import build_loader
    from parallel import parallelize
    from parallel.distributed import all_reduce
    from parallel.layout import setup_parallel
    from train.build import engine_options
    from train.optim import build_optimizer

    device = torch.device("cpu")
    pstate = setup_parallel(cfg.parallel, cfg.model, cfg.data.batch_size, device)
    torch.manual_seed(cfg.train.seed)
    model = models.build(cfg.model)
    engine = parallelize(model, pstate, engine_options(cfg), device, lambda m: build_optimizer(m, cfg.optim, device))
    loader = build_loader(cfg.data, pstate.dp_rank, pstate.dims.dp)
    batches = [loader.next_batch().seq_slice(pstate.sp_rank, pstate.dims.sp) for _ in range(cfg.train.grad_accum)]
    count = float(pstate.is_loss_rank) * sum(b.num_label_tokens() for b in batches)
    global_count = int(all_reduce(torch.tensor([count], dtype=torch.float64)).item())
    loss = engine.forward_backward(batches, global_count)
    loss = all_reduce(loss * float(pstate.is_loss_rank)).item() / global_count
    grads = full_grads(engine.module)
    if world > 1:
        boxes = [None] * world
        dist.all_gather_object(boxes, grads)
        grads = {}
        for box in boxes:
            for k, v in box.items():
                grads.setdefault(k, v)
    return loss, grads


def world_dp(world: int, par: dict) -> int:
    if par.get("dp", -1) > 0:
        return par["dp"]
    return world // (par.get("tp", 1) * par.get("pp", 1) * par.get("sp", 1))


def reference_config(pattern: str, dp: int, steps: int = 20, **extra):
    """The single-process run that a layout with `dp` data-parallel ranks must reproduce:
    the same global batch (dp × 4 rows)."""
    cfg = tiny_config(pattern, steps=steps, **extra)
    cfg.data.batch_size *= dp
    return cfg


def sp_available() -> bool:
    """Whether sequence parallelism is implemented in this checkout (issue 6 lands separately)."""
    import inspect

    import parallel

    return "is not implemented yet; set parallel.sp=1" not in inspect.getsource(parallel)


def assert_grads_close(grads: dict, ref: dict, atol: float = 2e-6, rtol: float = 1e-4) -> None:
    assert set(grads) == set(ref), set(grads) ^ set(ref)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref[name], atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


def dp_sharded_names(rank, world, cfg) -> tuple[list[str], list[str]]:
    """(names of this rank's parameters sharded over the dp mesh dimension, all names)."""
    from torch.distributed.tensor import DTensor, Shard

    import models
    from parallel import parallelize
    from parallel.layout import setup_parallel
    from train.build import engine_options
    from train.optim import build_optimizer

    device = torch.device("cpu")
    pstate = setup_parallel(cfg.parallel, cfg.model, cfg.data.batch_size, device)
    model = parallelize(models.build(cfg.model), pstate, engine_options(cfg), device,
                        lambda m: build_optimizer(m, cfg.optim, device)).module
    sharded = [n for n, p in model.named_parameters() if isinstance(p, DTensor)
               and any(isinstance(pl, Shard) and p.device_mesh.mesh_dim_names[i] in ("dp", "dp_sp")
                       for i, pl in enumerate(p.placements))]
    return sharded, [n for n, _ in model.named_parameters()]
