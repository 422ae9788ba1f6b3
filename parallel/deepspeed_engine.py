"""DeepSpeed ZeRO-1/2/3 as an alternative data-parallel engine (`parallel.engine="deepspeed"`).

Optional: `pip install longweave[deepspeed]`. The trainer keeps its own loop; DeepSpeed owns
backward, gradient averaging (over the data-parallel world, like DDP), clipping and the
optimizer step:
- we pass our torch AdamW (so DeepSpeed builds no fused-Adam op), with
  gradient_accumulation_steps = train.grad_accum, and call engine.backward(loss,
  scale_wrt_gas=False) + engine.step() per micro-batch (train/step.py): the loss is already
  scaled by 1 / global label count, so DeepSpeed must not divide by the accumulation count;
- the loop's optimizer.step()/zero_grad() become no-ops (EngineOptimizer), while writing a
  learning rate into param_groups still reaches the real optimizer;
- checkpoints: engine.save_checkpoint/load_checkpoint (ZeRO-partitioned optimizer states)
  inside the same atomic step directory, plus the full model weights through
  torch.distributed.checkpoint so evaluation and other layouts can read the weights.
Tensor, pipeline and sequence parallel do not compose with this engine here (use ddp/fsdp).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from parallel.dims import LayoutError

TAG = "deepspeed"


def check_deepspeed_layout(pstate) -> None:
    d = pstate.dims
    if d.tp > 1 or d.pp > 1 or d.sp > 1:
        raise LayoutError("parallel.engine='deepspeed' supports data parallelism only; "
                          "set parallel.tp=pp=sp=1 or use engine='ddp'/'fsdp'")
    if pstate.world == 1:
        raise LayoutError("parallel.engine='deepspeed' needs a distributed launch (torchrun); "
                          "use engine='ddp' for one process")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise LayoutError("parallel.engine='deepspeed' needs DeepSpeed: pip install -e '.[deepspeed]'") from None


class EngineOptimizer:
    """What the loop sees as its optimizer: param_groups of the real one; step is DeepSpeed's."""

    def __init__(self, engine):
        self.engine = engine

    @property
    def param_groups(self):
        return self.engine.optimizer.param_groups

    def step(self) -> None:
        pass

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass


def ds_config(cfg, n_params: int) -> dict:
    # DeepSpeed's default buckets hold 5e8 elements (2 GB fp32 each); a bucket never needs to
    # exceed the model, and allocating that much per step dominates small and CPU runs
    bucket = int(min(5e8, max(1e5, n_params)))
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "gradient_clipping": cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else 0.0,
        "zero_optimization": {"stage": cfg.parallel.zero_stage, "reduce_bucket_size": bucket,
                              "allgather_bucket_size": bucket},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def wrap_deepspeed(model: nn.Module, optimizer, pstate, cfg):
    import deepspeed

    if cfg.parallel.zero_stage not in (1, 2, 3):
        raise LayoutError(f"parallel.zero_stage={cfg.parallel.zero_stage} must be 1, 2 or 3")
    engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config(cfg, sum(p.numel() for p in model.parameters())),
                                                     dist_init_required=False)
    return engine, EngineOptimizer(engine)


def is_deepspeed(model) -> bool:
    return hasattr(model, "save_checkpoint") and hasattr(model, "module") and hasattr(model, "zero_optimization")


def grad_norm(engine) -> torch.Tensor:
    norm = engine.get_global_grad_norm()
    return torch.tensor(float(norm) if norm is not None else 0.0)


def full_weights(engine) -> dict[str, torch.Tensor]:
    """The whole model's weights on every rank (ZeRO-3 gathers its partitions)."""
    module = engine.module
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().clone() for k, v in module.state_dict().items()}
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def save_deepspeed(engine, directory: Path) -> None:
    import torch.distributed.checkpoint as dcp

    engine.save_checkpoint(str(directory), tag=TAG, save_latest=False)
    dcp.save({"model": full_weights(engine)}, checkpoint_id=str(directory))


def load_deepspeed(engine, directory: Path) -> None:
    if not (directory / TAG).is_dir():
        raise LayoutError(f"checkpoint {directory} was not written by parallel.engine='deepspeed'; "
                          "resume it with the engine that wrote it")
    engine.load_checkpoint(str(directory), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=False)
