"""Tensor parallelism, Megatron-style, on the "tp" dimension of the run's DeviceMesh.

Design: parameters become DTensors (DTensor `parallelize_module` plans for the plain
column/row linears and the vocab-parallel embedding); activations stay ordinary local
tensors (`use_local_output=True`). Why DTensor for the weights: torch.distributed.checkpoint
then sees every shard's global shape and offset, so a checkpoint written at tp=2 loads at
tp=1, under pipeline stages, or with FSDP2 (which composes with DTensor parameters as a 2-D
mesh) without any conversion code; the optimizer states follow automatically.
Where a DTensor plan does not express the math, explicit autograd collectives
(parallel/tensor/collectives.py) are used instead, because they are exact and obvious:
- GQA with fewer kv heads than tp ranks: K/V projections stay replicated; each rank computes
  them and keeps its kv head; their gradients are summed over tp by copy_to_tp on the
  weight view (parallel/tensor/views.py), which also holds under FSDP2.
- The LM head (tied or not) produces vocab-sharded logits from the local weight shard; the
  final norm's output is wrapped in copy_to_tp so its gradient is summed over tp, and the
  loss is the vocab-parallel cross-entropy (no [N, V] gather).
Mixers read head counts from their weight shapes, so the model code runs unchanged on shards.
Which plan a mixer gets is its MixerSpec's tp_plan; Mamba-2 and Griffin plans live in
parallel/tensor/recurrent.py.
"""
from __future__ import annotations

from torch import nn
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from parallel.tensor.collectives import copy_to_tp
from parallel.tensor.views import local_views


def keep_replicated_heads(linear: nn.Linear, head_dim: int, head: int, group) -> None:
    """Make a replicated K or V projection compute only kv head `head`.

    Used when kv_heads < tp: rank r keeps kv head r // (tp / kv_heads), so its query heads
    (a contiguous block of one GQA group) see the key/value head they need. The input enters
    through copy_to_tp and the weight through copy_to_tp (gradients summed over tp: ranks use
    different rows, or the same head for different queries); names stay those of the plain model.
    """
    lo, hi = head * head_dim, (head + 1) * head_dim
    linear.register_forward_pre_hook(lambda _m, args: (copy_to_tp(args[0], group), *args[1:]))
    views = {"weight": lambda w: copy_to_tp(w, group)[lo:hi]}
    if linear.bias is not None:       # Qwen2-style q/k/v biases follow their rows
        views["bias"] = lambda b: copy_to_tp(b, group)[lo:hi]
    local_views(linear, views)


def shard_attention(mixer: nn.Module, tp_mesh) -> None:
    """Attention (`*`, `W`): q/k/v column-parallel by heads (kv replicated when fewer than tp), wo row-parallel."""
    tp = tp_mesh.size()
    group, rank = tp_mesh.get_group(), tp_mesh.get_local_rank()
    plan = {"wq": ColwiseParallel(), "wo": RowwiseParallel()}
    if mixer.n_kv_heads % tp == 0:
        plan.update(wk=ColwiseParallel(), wv=ColwiseParallel())
    else:
        per_head = tp // mixer.n_kv_heads
        for name in ("wk", "wv"):
            keep_replicated_heads(getattr(mixer, name), mixer.head_dim, rank // per_head, group)
    parallelize_module(mixer, tp_mesh, plan)


def shard_block(block: nn.Module, tp_mesh) -> None:
    """Shard one block's mixer as its MixerSpec's tp_plan says (models/mixer_spec.py): a
    TensorParallelPlan (data: column/row-parallel submodule names) or a "module:function" here."""
    import importlib

    from models.mixer_spec import mixer_spec

    plan = mixer_spec(block.symbol).tp_plan
    if plan is None:
        raise NotImplementedError(f"tensor parallelism has no plan for {type(block.mixer).__name__}; set parallel.tp=1")
    if isinstance(plan, str):
        module, function = plan.split(":")
        getattr(importlib.import_module(module), function)(block.mixer, tp_mesh)
        return
    layout = {name: ColwiseParallel() for name in plan.colwise}
    layout.update({name: RowwiseParallel() for name in plan.rowwise})
    parallelize_module(block.mixer, tp_mesh, layout)


def _shard_head(model: nn.Module, tp_mesh) -> None:
    """Vocab-parallel embedding and LM head; the model's logits become the local vocab shard."""
    group = tp_mesh.get_group()
    if getattr(model, "embed", None) is not None:
        parallelize_module(model, tp_mesh, {"embed": RowwiseParallel(input_layouts=Replicate())})
    head = getattr(model, "lm_head", None)
    if head is not None:
        head.weight = nn.Parameter(distribute_tensor(head.weight.data, tp_mesh, [Shard(0)]))
    if getattr(model, "norm", None) is not None:
        model.norm.register_forward_hook(lambda _m, _i, out: copy_to_tp(out, group))

        def local_head_weight(_model=model):
            w = _model.embed.weight if _model.lm_head is None else _model.lm_head.weight
            return w.to_local()

        model.head_weight = local_head_weight


def apply_tensor_parallel(model: nn.Module, tp_mesh) -> nn.Module:
    """Shard `model` (a LanguageModel or a pipeline stage of one) over `tp_mesh` in place."""
    if tp_mesh.size() == 1:
        return model
    for block in model.layers:
        shard_block(block, tp_mesh)
    _shard_head(model, tp_mesh)
    model.tp_group = tp_mesh.get_group()
    return model
