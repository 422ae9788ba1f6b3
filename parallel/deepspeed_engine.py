"""DeepSpeed ZeRO-1/2/3 as an alternative data-parallel engine (`parallel.engine="deepspeed"`).

Optional: `pip install longweave[deepspeed]`. The trainer keeps its own loop; DeepSpeed owns
backward, gradient averaging (over the data-parallel world, like DDP), clipping and the
optimizer step:
- we pass our torch AdamW (so DeepSpeed builds no fused-Adam op), with
  gradient_accumulation_steps = train.grad_accum, and call ds.backward(loss) + ds.step() per
  micro-batch (DeepSpeedEngine.backward): the loss is already scaled by 1 / global label count;
- DeepSpeedEngine.step() is a no-op (DeepSpeed stepped at the accumulation boundary) and
  clip() reads the norm DeepSpeed clipped to; set_lr writes into the real optimizer's groups;
- checkpoints: ds.save_checkpoint/load_checkpoint (ZeRO-partitioned optimizer states)
  inside the same atomic step directory, plus the full model weights through
  torch.distributed.checkpoint so evaluation and other layouts can read the weights.
Tensor, pipeline and sequence parallel do not compose with this engine here (use ddp/fsdp).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from parallel.dims import LayoutError
from parallel.engine import Engine, OptimizerFactory
from parallel.layout import ParallelState
from parallel.options import EngineOptions

TAG = "deepspeed"


def check_deepspeed_layout(pstate: ParallelState) -> None:
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


class DeepSpeedEngine(Engine):
    """DeepSpeed owns backward, gradient averaging, clipping and the optimizer step."""

    @classmethod
    def build(cls, model: nn.Module, pstate: ParallelState, opts: EngineOptions, device: torch.device,
              make_optimizer: OptimizerFactory, grad_sync=None, root_units=None) -> Engine:
        check_deepspeed_layout(pstate)
        import deepspeed

        if opts.zero_stage not in (1, 2, 3):
            raise LayoutError(f"parallel.zero_stage={opts.zero_stage} must be 1, 2 or 3")
        config = ds_config(opts, sum(p.numel() for p in model.parameters()))
        ds, _, _, _ = deepspeed.initialize(model=model, optimizer=make_optimizer(model), config=config,
                                           dist_init_required=False)
        return cls(ds, ds.optimizer, pstate, opts, device, grad_sync, module=ds.module)

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss)
        self.model.step()                        # a no-op except at the accumulation boundary

    def clip(self, max_norm: float) -> torch.Tensor:
        norm = self.model.get_global_grad_norm()   # DeepSpeed clipped inside ds.step()
        return torch.tensor(float(norm) if norm is not None else 0.0)

    def step(self) -> None:
        pass

    def save(self, directory: Path) -> None:
        """ZeRO-partitioned optimizer + full weights via DCP (other layouts and evaluation read those)."""
        import torch.distributed.checkpoint as dcp

        self.model.save_checkpoint(str(directory), tag=TAG, save_latest=False)
        dcp.save({"model": full_weights(self.model)}, checkpoint_id=str(directory))

    def load_weights(self, directory: Path) -> None:
        raise NotImplementedError("resuming an imported (weights-only) checkpoint under DeepSpeed is not "
                                  "supported; use parallel.engine=ddp or fsdp")

    def load(self, directory: Path) -> None:
        if not (directory / TAG).is_dir():
            raise LayoutError(f"checkpoint {directory} was not written by parallel.engine='deepspeed'; "
                              "resume it with the engine that wrote it")
        self.model.load_checkpoint(str(directory), tag=TAG, load_optimizer_states=True,
                                   load_lr_scheduler_states=False)


def ds_config(opts: EngineOptions, n_params: int) -> dict:
    # DeepSpeed's default buckets hold 5e8 elements (2 GB fp32 each); a bucket never needs to
    # exceed the model, and allocating that much per step dominates small and CPU runs
    bucket = int(min(5e8, max(1e5, n_params)))
    return {
        "train_micro_batch_size_per_gpu": opts.micro_batch_size,
        "gradient_accumulation_steps": opts.grad_accum,
        "gradient_clipping": opts.grad_clip if opts.grad_clip > 0 else 0.0,
        "zero_optimization": {"stage": opts.zero_stage, "reduce_bucket_size": bucket,
                              "allgather_bucket_size": bucket},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def full_weights(engine) -> dict[str, torch.Tensor]:
    """The whole model's weights on every rank (ZeRO-3 gathers its partitions)."""
    module = engine.module
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().clone() for k, v in module.state_dict().items()}
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
