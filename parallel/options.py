"""EngineOptions: the few training settings that parallel/ acts on, as one typed, frozen value.

The trainer builds it from its config sections ([parallel], [train], [data], [optim]); parallel/
never sees the whole run configuration, so what it depends on is written down here.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineOptions:
    engine: str = "ddp"                    # data-parallel engine: ddp | fsdp | deepspeed
    zero_stage: int = 1                    # DeepSpeed ZeRO stage
    pp_schedule: str = "1f1b"              # gpipe | 1f1b | interleaved_1f1b
    pp_microbatches: int = 2
    seq_len: int = 256                     # the pipeline cut balances the FLOPs of this length
    micro_batch_size: int = 8              # rows per data-parallel rank per micro-batch
    grad_accum: int = 1
    grad_clip: float = 1.0                 # 0 disables clipping
    activation_checkpointing: bool = False
    checkpoint_policy: str = "full"        # full | selective (parallel/checkpointing.py)
    compile: bool = False
    loss_chunk: int = 0                    # chunked cross-entropy: tokens per chunk (0: plain logits)
    float8: bool = False                   # float8 linears via torchao (CUDA, compute capability >= 8.9)
    bf16: bool = False                     # bf16 autocast on CUDA; FSDP2 bf16 parameters (CUDA and CPU)

    @property
    def max_grad_norm(self) -> float:
        return self.grad_clip if self.grad_clip > 0 else float("inf")
