"""Sequence-parallel language models against the single-process model: logits and every
parameter gradient in float64 for `*` (GQA, MQA), `W`, `M`, `R` and a hybrid, P = 2, 3, 4, with
packed documents crossing rank slices; and rematerialization-aware checkpointing (same
gradients, DistAttn forward run once per attention layer per step)."""
from __future__ import annotations

import pytest
import torch
from test_distattn import packed_docs

import models
from models.config import ModelConfig
from parallel.checkpointing import apply_activation_checkpointing
from parallel.sequence import SequenceParallelHooks

T = 24
CASES = {
    "gqa": dict(pattern="(*-)x2", n_heads=4, n_kv_heads=2),
    "mqa": dict(pattern="*-*", n_heads=4, n_kv_heads=1),
    "window": dict(pattern="(W-)x2", n_heads=4, n_kv_heads=2, window=5),
    "mamba2": dict(pattern="(M-)x2"),
    "griffin": dict(pattern="(R-)x2"),
    "hybrid": dict(pattern="M-*-R-W-", n_heads=4, n_kv_heads=2, window=7),
}


def build(case: str):
    cfg = ModelConfig(vocab_size=64, d_model=32, d_state=8, ssm_headdim=8, ssm_chunk_size=4, conv_width=4,
                      **CASES[case])
    torch.manual_seed(0)
    return models.build(cfg).double()


def sp_vs_single(rank, world, case, checkpointing, mode="distattn", head_group=1):
    model = build(case)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 64, (2, T), generator=g)
    docs = packed_docs(2, T)
    pos = torch.stack([torch.cat([torch.arange(int((row == d).sum())) for d in row.unique_consecutive()])
                       for row in docs])
    w = torch.randn(2, T, 64, generator=g, dtype=torch.float64)
    ref = model(tokens, pos, docs)
    (ref * w).sum().backward()
    ref_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    if checkpointing:
        apply_activation_checkpointing(model)
    n = T // world
    sl = slice(rank * n, (rank + 1) * n)
    hooks = SequenceParallelHooks(mode=mode, head_group=head_group)
    out = model(tokens[:, sl], pos[:, sl], docs[:, sl], sp=hooks)
    (out * w[:, sl]).sum().backward()
    err = float((out - ref[:, sl]).abs().max())
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    return err, grads, ref_grads, hooks.distattn_forward_calls


def check(pool, case, checkpointing=False, mode="distattn", head_group=1):
    out = pool.run(sp_vs_single, case, checkpointing, mode, head_group)
    assert max(o[0] for o in out) < 1e-10, case
    for name, ref in out[0][2].items():
        total = sum(o[1][name] for o in out)
        assert torch.allclose(total, ref, atol=1e-10, rtol=1e-8), (case, name, float((total - ref).abs().max()))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_sp_model_matches_single_process(pool2, pool3, pool4, case):
    for pool in (pool2, pool3, pool4):
        check(pool, case)


@pytest.mark.parametrize("case", ["gqa", "hybrid"])
def test_remat_checkpointing_runs_distattn_once(pool2, pool4, case):
    n_global = CASES[case]["pattern"].count("*") * (2 if "x2" in CASES[case]["pattern"] else 1)
    for pool in (pool2, pool4):
        out = check(pool, case, checkpointing=True)
        assert all(o[3] == n_global for o in out)          # one DistAttn forward per `*` layer per step
