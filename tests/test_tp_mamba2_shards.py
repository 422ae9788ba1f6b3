"""Tensor parallelism shards Mamba-2's per-component projection and conv weights.

Under tp=2 each rank's in_proj_z/x/dt and conv_x hold half the single-process rows (its heads),
in_proj_B/C and conv_B/C half as well when ssm_ngroups % tp == 0 and the full rows (replicated)
when ngroups=1; gradients and Adam states are local shards of the same size, and the gathered
gradients equal the single-process ones.
"""
from __future__ import annotations

import pytest
import torch
from test_layouts_helpers import assert_grads_close, full_grads, one_step_grads, tiny_config

HEAD_PARTS = ["in_proj_z.weight", "in_proj_x.weight", "in_proj_dt.weight", "conv_x.weight", "conv_x.bias"]
GROUP_PARTS = ["in_proj_B.weight", "in_proj_C.weight", "conv_B.weight", "conv_B.bias", "conv_C.weight", "conv_C.bias"]


def _config(ngroups: int, tp: int):
    cfg = tiny_config("M-M-", **({"tp": tp} if tp > 1 else {}))
    cfg.model.ssm_ngroups = ngroups
    return cfg


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _shards(rank, world, cfg):
    """(single-process weights, {name: (local weight, local grad, local Adam exp_avg)}) of layer 0's
    Mamba-2 parameters, the summed loss and the gathered full gradients, after one step."""
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
    prefix = "layers.0.mixer."
    full = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(prefix)}
    engine = parallelize(model, pstate, engine_options(cfg), device, lambda m: build_optimizer(m, cfg.optim, device))
    model, optim = engine.module, engine.optimizer
    before = {n.removeprefix(prefix): _local(p.data).clone() for n, p in model.named_parameters()
              if n.startswith(prefix)}
    batch = build_loader(cfg.data, pstate.dp_rank, pstate.dims.dp).next_batch()
    count = float(pstate.is_loss_rank) * batch.num_label_tokens()
    global_count = int(all_reduce(torch.tensor([count], dtype=torch.float64)).item())
    loss = engine.forward_backward([batch], global_count)
    loss = all_reduce(loss * float(pstate.is_loss_rank)).item() / global_count
    grads = full_grads(model)
    optim.step()
    local = {}
    for name, p in model.named_parameters():
        if name.startswith(prefix):
            leaf = name.removeprefix(prefix)
            local[leaf] = (before[leaf], _local(p.grad), _local(optim.state[p]["exp_avg"]))
    return {n.removeprefix(prefix): w for n, w in full.items()}, local, loss, grads


@pytest.mark.parametrize("ngroups", [2, 1])
def test_tp2_shards_mamba2_projection_and_conv(pool2, ngroups):
    ref_loss, ref_grads = one_step_grads(0, 1, _config(ngroups, 1))
    for rank, (full, local, loss, grads) in enumerate(pool2.run(_shards, _config(ngroups, 2))):
        split = HEAD_PARTS + (GROUP_PARTS if ngroups % 2 == 0 else [])
        for name in HEAD_PARTS + GROUP_PARTS:
            weight, grad, exp_avg = local[name]
            want = full[name].chunk(2, dim=0)[rank] if name in split else full[name]
            assert weight.shape == want.shape, (name, tuple(weight.shape), tuple(want.shape))
            assert torch.equal(weight, want), name
            assert grad.shape == want.shape and exp_avg.shape == want.shape, name
            assert grad.abs().sum() > 0, name
        assert abs(loss - ref_loss) < 1e-5
        assert_grads_close(grads, ref_grads)
        mixer_local = sum(local[n][0].numel() for n in split)
        mixer_full = sum(full[n].numel() for n in split)
        assert 2 * mixer_local == mixer_full
