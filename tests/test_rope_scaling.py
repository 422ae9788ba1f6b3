"""RoPE scaling (models/rope.py): every scaling against its formula written out per channel in
float64, against transformers' ROPE_INIT_FUNCTIONS where transformers has the method (it
computes in float32, so there the tolerance is float32 round-off), the relative-position
property, partial RoPE, dynamic NTK's length rule (also under sequence parallelism), and the
config checks."""
from __future__ import annotations

import math

import pytest
import torch

import models
from models.config import ModelConfig
from models.rope import RopeSpec, apply_rope, attention_factor, inv_frequencies, rope_angles

D = 64
THETA = 10000.0


def base_freq(i: int, dim: int = D, theta: float = THETA) -> float:
    return theta ** (-2 * i / dim)


def expected(spec: RopeSpec, dim: int = D, seq_len: int | None = None) -> list[float]:
    """The scaled inverse frequencies, one channel pair at a time, straight from the papers."""
    s, L0 = spec.factor, spec.original_max_len
    out = []
    for i in range(dim // 2):
        f = base_freq(i, dim, spec.theta)
        if spec.scaling == "linear":
            f = f / s
        elif spec.scaling == "ntk":
            f = (spec.theta * s ** (dim / (dim - 2))) ** (-2 * i / dim)
        elif spec.scaling == "dynamic":
            L = max(seq_len, L0)
            f = (spec.theta * (s * L / L0 - s + 1) ** (dim / (dim - 2))) ** (-2 * i / dim)
        elif spec.scaling == "yarn":
            lo = math.floor(dim * math.log(L0 / (spec.beta_fast * 2 * math.pi)) / (2 * math.log(spec.theta)))
            hi = math.ceil(dim * math.log(L0 / (spec.beta_slow * 2 * math.pi)) / (2 * math.log(spec.theta)))
            lo, hi = max(lo, 0), min(hi, dim - 1)
            keep = 1 - min(1.0, max(0.0, (i - lo) / (hi - lo)))
            f = f / s * (1 - keep) + f * keep
        elif spec.scaling == "llama3":
            wl = 2 * math.pi / f
            if wl > L0 / spec.low_freq_factor:
                f = f / s
            elif wl >= L0 / spec.high_freq_factor:
                t = (L0 / wl - spec.low_freq_factor) / (spec.high_freq_factor - spec.low_freq_factor)
                f = (1 - t) * f / s + t * f
        elif spec.scaling == "truncated":
            f = f if f >= spec.trunc_b else (spec.trunc_rho if f > spec.trunc_a else 0.0)
        out.append(f)
    return out


SPECS = {
    "none": RopeSpec(),
    "linear": RopeSpec(scaling="linear", factor=4.0),
    "ntk": RopeSpec(scaling="ntk", factor=8.0),
    "dynamic": RopeSpec(scaling="dynamic", factor=4.0, original_max_len=256),
    "yarn": RopeSpec(scaling="yarn", factor=16.0, original_max_len=4096),
    "llama3": RopeSpec(theta=500000.0, scaling="llama3", factor=8.0, original_max_len=8192),
    "truncated": RopeSpec(scaling="truncated", trunc_a=1e-3, trunc_b=2e-2, trunc_rho=5e-4),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_frequencies_match_formula(name):
    spec = SPECS[name]
    for seq_len in (100, 1000):
        got = inv_frequencies(spec, D, seq_len=seq_len)
        want = torch.tensor(expected(spec, seq_len=seq_len), dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    if name not in ("none", "dynamic"):
        assert not torch.equal(inv_frequencies(spec, D), inv_frequencies(RopeSpec(theta=spec.theta), D))


def test_scalings_do_what_they_claim():
    plain = inv_frequencies(RopeSpec(), D)
    yarn = inv_frequencies(SPECS["yarn"], D)
    assert yarn[0] == plain[0] and torch.allclose(yarn[-1], plain[-1] / 16)       # fast kept, slow interpolated
    trunc = inv_frequencies(SPECS["truncated"], D)
    assert set(trunc[plain < 1e-3].tolist()) == {0.0} and set(trunc[(plain > 1e-3) & (plain < 2e-2)].tolist()) == {5e-4}
    assert torch.equal(inv_frequencies(SPECS["dynamic"], D, seq_len=256), plain)   # inside L0: unscaled
    assert attention_factor(SPECS["yarn"]) == pytest.approx(0.1 * math.log(16) + 1)
    assert attention_factor(RopeSpec(scaling="yarn", factor=4.0, yarn_attn_factor=1.5)) == 1.5


def hf_config(spec: RopeSpec, max_pos: int):
    from transformers import LlamaConfig

    params = {"rope_type": "default" if spec.scaling == "none" else spec.scaling, "rope_theta": spec.theta}
    if spec.scaling != "none":
        params["factor"] = spec.factor
    if spec.scaling in ("yarn", "llama3"):
        params["original_max_position_embeddings"] = spec.original_max_len
    if spec.scaling == "yarn":
        params.update(beta_fast=spec.beta_fast, beta_slow=spec.beta_slow)
    if spec.scaling == "llama3":
        params.update(low_freq_factor=spec.low_freq_factor, high_freq_factor=spec.high_freq_factor)
    return LlamaConfig(hidden_size=D * 2, num_attention_heads=2, max_position_embeddings=max_pos,
                       rope_parameters=params)


@pytest.mark.parametrize("name", ["linear", "dynamic", "yarn", "llama3"])
def test_frequencies_match_transformers(name):
    pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    spec = SPECS[name]
    cfg = hf_config(spec, max_pos=spec.original_max_len or 2048)
    for seq_len in (None, 3000):
        theirs, factor = ROPE_INIT_FUNCTIONS[name](cfg, "cpu", seq_len=seq_len)
        ours = inv_frequencies(spec, D, seq_len=seq_len)
        torch.testing.assert_close(ours.float(), theirs, rtol=2e-6, atol=0)
        assert factor == pytest.approx(attention_factor(spec), rel=1e-12)


def random_qk(seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 1, 1, D, generator=g, dtype=torch.float64),
            torch.randn(1, 1, 1, D, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("name", [n for n in SPECS if n != "dynamic"])
def test_scores_depend_on_distance_only(name):
    """q·k after rotation depends on the position difference alone, for every static scaling;
    YaRN multiplies it by the attention factor squared."""
    spec = SPECS[name]
    q, k = random_qk(3)

    def score(pq: int, pk: int) -> float:
        cq, sq = rope_angles(torch.tensor([[pq]]), D, spec, torch.float64)
        ck, sk = rope_angles(torch.tensor([[pk]]), D, spec, torch.float64)
        return float((apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum())

    assert score(70, 20) == pytest.approx(score(5050, 5000), rel=1e-9, abs=1e-9)
    assert score(0, 0) == pytest.approx(float((q * k).sum()) * attention_factor(spec) ** 2, rel=1e-12)


def test_partial_rope_keeps_the_tail():
    x = torch.randn(2, 5, 3, 16, dtype=torch.float64)
    pos = torch.arange(5).expand(2, 5)
    cos, sin = rope_angles(pos, 8, 500.0, torch.float64)
    y = apply_rope(x, cos, sin)
    assert torch.equal(y[..., 8:], x[..., 8:])
    torch.testing.assert_close(y[..., :8], apply_rope(x[..., :8], cos, sin), rtol=0, atol=0)
    assert not torch.allclose(y[..., :8], x[..., :8])


def dynamic_model():
    cfg = ModelConfig(pattern="*-*", vocab_size=50, d_model=32, n_heads=2, rope_scaling="dynamic",
                      rope_factor=4.0, rope_original_max_len=10)
    torch.manual_seed(0)
    return models.build(cfg).double()


def test_dynamic_length_is_the_largest_position():
    """Within L0 dynamic equals unscaled RoPE; beyond it, every token (early ones too) uses the
    base of the call's largest position, as transformers does for a whole sequence."""
    model = dynamic_model()
    plain = models.build(ModelConfig(**{**model.cfg.__dict__, "rope_scaling": "none"})).double()
    plain.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 50, (2, 16))
    short = tokens[:, :8]
    torch.testing.assert_close(model(short), plain(short), rtol=0, atol=0)
    long_out = model(tokens)
    assert not torch.allclose(long_out[:, :8], plain(short))
    attn = model.layers[0].mixer
    assert attn.rope_length(torch.arange(16).expand(2, 16)) == 16


def dynamic_sp(rank, world):
    model = dynamic_model()
    T = 16
    tokens = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(5))
    pos = torch.arange(T).expand(2, T)
    ref = model(tokens, pos)
    from parallel.sequence import SequenceParallelHooks

    n = T // world
    sl = slice(rank * n, (rank + 1) * n)
    out = model(tokens[:, sl], pos[:, sl], sp=SequenceParallelHooks())
    return float((out - ref[:, sl]).abs().max())


def test_dynamic_under_sequence_parallel(pool2):
    """Rank 0 only holds positions < L0, yet rotates like the whole sequence (global length)."""
    errs = pool2.run(dynamic_sp)
    assert max(errs) < 1e-12


@pytest.mark.parametrize("kv, msg", [
    (dict(rope_scaling="bogus"), "rope_scaling"),
    (dict(rope_scaling="yarn", rope_factor=4.0), "rope_original_max_len"),
    (dict(rope_scaling="linear", rope_factor=0.5), "rope_factor"),
    (dict(rope_scaling="truncated", rope_trunc_a=0.1, rope_trunc_b=0.01), "rope_trunc"),
    (dict(rope_fraction=0.0), "rope_fraction"),
])
def test_bad_rope_config(kv, msg):
    with pytest.raises(ValueError, match=msg):
        ModelConfig(**kv).validate()
