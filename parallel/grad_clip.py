"""Global gradient-norm clipping for any layout (DDP, FSDP2, tensor and pipeline parallel).

torch.nn.utils.clip_grad_norm_ cannot mix DTensor gradients (tp shards, FSDP2 shards) with
plain ones, and knows nothing of pipeline stages. Here each gradient contributes its local
squared norm, summed over every mesh dimension on which it is *sharded* (replicated
dimensions hold copies and are counted once); then the per-stage totals are summed over
the pipeline group. Parameters listed in `skip` (e.g. the copy of a tied embedding on the
last pipeline stage) are left out of the norm but still scaled.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Shard


def _sharded_groups(p: DTensor) -> tuple:
    mesh = p.device_mesh
    return tuple(mesh.get_group(i) for i, pl in enumerate(p.placements) if isinstance(pl, Shard))


def clip_grad_norm(params: list[nn.Parameter], max_norm: float, pp_group=None,
                   skip: set[int] | None = None) -> torch.Tensor:
    """Clip gradients in place to global norm `max_norm` (inf: only measure); returns the norm."""
    skip = skip or set()
    buckets: dict[tuple, list[torch.Tensor]] = {}
    grads = []
    for p in params:
        g = p.grad
        if g is None:
            continue
        local = g._local_tensor if isinstance(g, DTensor) else g
        grads.append(local)
        if id(p) in skip:
            continue
        key = _sharded_groups(g) if isinstance(g, DTensor) else ()
        buckets.setdefault(key, []).append(local.detach())
    total = torch.zeros((), dtype=torch.float64)
    for groups, tensors in sorted(buckets.items(), key=lambda kv: len(kv[0])):
        # one device sync per bucket, not per parameter
        sq = torch.stack([n.double() for n in torch._foreach_norm(tensors)]).pow(2).sum()
        for group in groups:
            sq = sq.to(_device_for(group))
            dist.all_reduce(sq, group=group)
        total = total + sq.cpu()
    if pp_group is not None:
        total = total.to(_device_for(pp_group))
        dist.all_reduce(total, group=pp_group)
        total = total.cpu()
    norm = total.sqrt()
    if max_norm != float("inf") and grads:
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef.to(g.device, g.dtype))
    return norm.float()


def _device_for(group) -> torch.device:
    """NCCL groups need CUDA tensors; gloo takes CPU ones."""
    backend = dist.get_backend(group)
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
