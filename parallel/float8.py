"""float8 linears (train.float8) through torchao's float8 training, an optional extra.

The blocks' nn.Linear layers become torchao Float8Linear (dynamic per-tensor scaling: matmuls in
float8 on tensor cores, master weights and optimizer states unchanged); embedding and LM head
stay in high precision, as torchtitan does. It needs torchao and a GPU with float8 tensor cores
(compute capability 8.9: Ada, Hopper and later); anything else is refused in one line at start
rather than silently training in bf16. Under tensor parallelism torchao needs its own float8
column/row plans, which we do not have: refused too.
"""
from __future__ import annotations

import torch
from torch import nn

from kernels.dispatch import has_module
from parallel.dims import LayoutError

MIN_CAPABILITY = (8, 9)


def float8_refusal(device: torch.device, tp: int, torchao: bool | None = None,
                   capability: tuple[int, int] | None = None) -> str | None:
    """Why train.float8 cannot run here (one line), or None when it can."""
    torchao = has_module("torchao") if torchao is None else torchao
    if not torchao:
        return "train.float8 needs torchao (pip install 'longweave[gpu]' or pip install torchao); set train.float8=false"
    if device.type != "cuda":
        return "train.float8 needs a CUDA GPU with float8 tensor cores; set train.float8=false on this device"
    capability = torch.cuda.get_device_capability(device) if capability is None else capability
    if tuple(capability) < MIN_CAPABILITY:
        return (f"train.float8 needs compute capability >= 8.9 (Ada/Hopper), this GPU has "
                f"{capability[0]}.{capability[1]}; set train.float8=false")
    if tp > 1:
        return "train.float8 does not run under tensor parallelism; set train.float8=false or parallel.tp=1"
    return None


def apply_float8(model: nn.Module, device: torch.device, tp: int) -> nn.Module:
    """Swap the blocks' linears for torchao Float8Linear, or raise LayoutError saying why not."""
    reason = float8_refusal(device, tp)
    if reason is not None:
        raise LayoutError(reason)
    from torchao.float8 import convert_to_float8_training

    def in_blocks_and_aligned(module: nn.Module, fqn: str) -> bool:
        # float8 matmuls need both dimensions divisible by 16
        return fqn.startswith("layers.") and module.in_features % 16 == 0 and module.out_features % 16 == 0

    convert_to_float8_training(model, module_filter_fn=in_blocks_and_aligned)
    return model
