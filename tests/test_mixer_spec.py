"""A mixer is its module and its MixerSpec: a toy gated linear-attention layer, defined and
registered here and nowhere else, builds, counts its FLOPs, and trains under sequence parallel
(sp = 2) and tensor parallel (tp = 2) to the single-process losses; the built-in specs name
real config fields and reproduce the weight-decay groups."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from torch import nn

import models
from kernels.rglru import linear_scan
from models.mixer_spec import (
    MixerSpec,
    TensorParallelPlan,
    divisible,
    mixer_spec,
    register,
    registered,
    unregister,
)
from train.config import load_config
from train.loop import train

HEAD_DIM = 4


class ToyGLA(nn.Module):
    """Gated linear attention: per head, S_t = diag(a_t) S_{t-1} + k_t v_tᵀ and o_t = q_t S_t,
    with a_t = sigmoid(W_g x_t) per key channel. The matrix state, flattened, is a diagonal
    linear recurrence, so it runs on the linear-scan kernel and its sequence-parallel hook."""

    def __init__(self, cfg, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        inner = cfg.n_heads * HEAD_DIM
        self.wq, self.wk, self.wv, self.wg = (nn.Linear(cfg.d_model, inner, bias=False) for _ in range(4))
        self.wo = nn.Linear(inner, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v, g = (w(x).view(b, t, -1, HEAD_DIM) for w in (self.wq, self.wk, self.wv, self.wg))
        h = q.shape[2]                       # local heads: fewer on a tensor-parallel shard
        a = torch.sigmoid(g).unsqueeze(-1).expand(b, t, h, HEAD_DIM, HEAD_DIM).reshape(b, t, -1)
        kv = (k.unsqueeze(-1) * v.unsqueeze(-2)).reshape(b, t, -1)
        if ctx.sp is not None:
            s, _ = ctx.sp.linear_scan(linear_scan, a, kv, doc_ids=ctx.doc_ids, initial_state=None)
        else:
            s = linear_scan(a, kv, doc_ids=ctx.doc_ids)
        o = (q.unsqueeze(-1) * s.view(b, t, h, HEAD_DIM, HEAD_DIM)).sum(-2)
        return self.wo(o.reshape(b, t, -1))


TOY = MixerSpec(
    "G", "toy gated linear attention", module_class=ToyGLA, build=ToyGLA, config_fields=("n_heads",),
    flops=lambda m, seq_len: 5.0 * m.wq.out_features * HEAD_DIM,     # outer product, scan, readout
    tp_plan=TensorParallelPlan(colwise=("wq", "wk", "wv", "wg"), rowwise=("wo",)),
    tp_check=lambda cfg, tp: divisible(cfg.n_heads, "the toy's heads", "model.n_heads", tp),
    sp_hooks=("linear_scan",),
)
ARGS = ["--model.pattern=G-G-", "--model.d_model=16", "--model.n_heads=2", "--model.mlp_hidden=32",
        "--data.seq_len=32", "--data.batch_size=4", "--data.min_doc_chars=10", "--data.max_doc_chars=60",
        "--train.steps=6", "--train.log_every=1000", "--checkpoint.every=0", "--checkpoint.save_final=false",
        "--metrics.tensorboard=false", "--optim.warmup_steps=2"]


@contextmanager
def toy_registered():
    register(TOY)
    try:
        yield
    finally:
        unregister(TOY.symbol)


def _toy_run(rank, world, run_dir, extra):
    with toy_registered():
        return train(load_config("configs/tiny.toml", [*ARGS, f"--train.run_dir={run_dir}", *extra]),
                     log=lambda *_: None).losses


def _toy_local_shapes(rank, world):
    """Local weight shapes of the first toy layer after parallelize at tp = 2 (the plan was applied)."""
    from parallel import parallelize
    from parallel.layout import setup_parallel
    from train.build import engine_options
    from train.optim import build_optimizer

    with toy_registered():
        cfg = load_config("configs/tiny.toml", [*ARGS, "--parallel.tp=2"])
        device = torch.device("cpu")
        pstate = setup_parallel(cfg.parallel, cfg.model, cfg.data.batch_size, device)
        engine = parallelize(models.build(cfg.model), pstate, engine_options(cfg), device,
                             lambda m: build_optimizer(m, cfg.optim, device))
        mixer = engine.module.layers[0].mixer
        return {n: tuple(getattr(mixer, n).weight.to_local().shape) for n in ("wq", "wg", "wo")}


def test_toy_mixer_builds_and_counts_flops():
    with toy_registered():
        cfg = load_config(None, ARGS).model
        model = models.build(cfg)
        assert [type(b.mixer).__name__ for b in model.layers][:2] == ["ToyGLA", "GatedMLP"]
        inner = cfg.n_heads * HEAD_DIM
        layer = 3.0 * (2.0 * 5 * cfg.d_model * inner + 5.0 * inner * HEAD_DIM)
        mlp = 3.0 * 2.0 * 3 * cfg.d_model * cfg.mlp_hidden
        head = 6.0 * cfg.d_model * cfg.vocab_size
        assert models.flops_per_token(model, 32) == pytest.approx(head + 2 * layer + 2 * mlp)
    with pytest.raises(Exception, match="unknown symbol 'G'"):
        models.build(load_config(None, ARGS).model)


def test_toy_mixer_trains_under_sp2_and_tp2_like_one_process(pool2, tmp_path):
    single = _toy_run(0, 1, str(tmp_path / "one"), [])
    assert len(single) == 6 and single[-1] < single[0]
    for extra in (["--parallel.sp=2"], ["--parallel.tp=2"]):
        got = pool2.run(_toy_run, str(tmp_path / extra[0][11:13]), extra)
        torch.testing.assert_close(torch.tensor(got[0]), torch.tensor(single), rtol=1e-5, atol=0)
    inner = 2 * HEAD_DIM
    assert pool2.run(_toy_local_shapes)[0] == {"wq": (inner // 2, 16), "wg": (inner // 2, 16), "wo": (16, inner // 2)}


def test_builtin_specs_name_config_fields_and_decay_groups():
    from dataclasses import fields

    from models.config import ModelConfig

    names = {f.name for f in fields(ModelConfig)}
    for spec in registered().values():
        assert set(spec.config_fields) <= names, spec.symbol
    assert list(registered())[:5] == ["*", "W", "M", "R", "-"]
    model = models.build(load_config(None, ["--model.pattern=M-R-*", "--model.d_model=32", "--model.n_heads=2",
                                            "--model.d_state=8", "--model.ssm_headdim=8"]).model)
    expected = {n for n, p in model.named_parameters() if p.ndim < 2 or n.rsplit(".", 1)[-1] in ("A_log", "D", "dt_bias")}
    assert model.no_weight_decay_names() == expected
    assert mixer_spec("M").no_decay == ("A_log", "D", "dt_bias")
