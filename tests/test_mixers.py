"""M, R, W and * mixers inside a LanguageModel (float64, random weights and tokens):
split-state equivalence (state passing), packed documents = separate documents, causality,
flops hooks, and the fast kernels = the reference kernels at model level."""
from __future__ import annotations

import pytest
import torch

import models

PATTERNS = {"attn": "*", "window": "W", "mamba2": "M", "griffin": "R", "hybrid": "M-R-W-*-"}
T = 40


def build(pattern: str, seed: int = 0) -> models.LanguageModel:
    torch.manual_seed(seed)
    cfg = models.ModelConfig(pattern=pattern, d_model=32, n_heads=4, n_kv_heads=2, window=7, d_state=8,
                             ssm_headdim=8, ssm_ngroups=2, ssm_chunk_size=8, lru_heads=4)
    model = models.build(cfg).double()
    with torch.no_grad():  # non-trivial norms and D so every term of every mixer matters
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", ".D")):
                p.add_(0.3 * torch.randn_like(p))
    return model


def tokens(b=2, t=T, seed=1):
    return torch.randint(0, 260, (b, t), generator=torch.Generator().manual_seed(seed))


def positions(start, stop, b=2):
    return torch.arange(start, stop).expand(b, -1)


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("k", [1, 5, 17, 39])
def test_split_state_passing_equals_full_forward_and_grad(name, k):
    model = build(PATTERNS[name])
    x = tokens()
    full = model(x)
    g = torch.randn_like(full)
    want = torch.autograd.grad((full * g).sum(), list(model.parameters()))
    first, states = model(x[:, :k], positions(0, k), return_states=True)
    second = model(x[:, k:], positions(k, T), initial_states=states)
    got_out = torch.cat([first, second], 1)
    torch.testing.assert_close(got_out, full, rtol=1e-10, atol=1e-10)
    got = torch.autograd.grad((got_out * g).sum(), list(model.parameters()))
    for (pname, _), a, b in zip(model.named_parameters(), got, want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=f"grad of {pname}")


@pytest.mark.parametrize("name", list(PATTERNS))
def test_three_way_split_with_packed_documents(name):
    model = build(PATTERNS[name])
    x = tokens()
    # documents start 1-2 tokens before a cut: the carried conv tail / KV cache then holds
    # inputs of the previous document, which the next chunk must not read
    doc = torch.tensor([[0] * 18 + [1] * 22, [0] * 8 + [1] * 22 + [2] * 10])
    pos = torch.cat([torch.arange(18), torch.arange(22)]).expand(2, -1).clone()
    pos[1] = torch.cat([torch.arange(8), torch.arange(22), torch.arange(10)])
    full = model(x, pos, doc)
    outs, states = [], None
    for lo, hi in [(0, 9), (9, 20), (20, T)]:  # no cut on a boundary, so no caller-side zeroing
        out, states = model(x[:, lo:hi], pos[:, lo:hi], doc[:, lo:hi], initial_states=states,
                            return_states=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(PATTERNS))
def test_packed_documents_equal_separate_documents(name):
    model = build(PATTERNS[name])
    lengths = [11, 3, 26]
    x = tokens(b=1)
    doc = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    packed = model(x, pos, doc)
    start = 0
    for n in lengths:
        alone = model(x[:, start:start + n])
        torch.testing.assert_close(packed[:, start:start + n], alone, rtol=1e-10, atol=1e-10)
        start += n


@pytest.mark.parametrize("name", list(PATTERNS))
def test_causality(name):
    model = build(PATTERNS[name])
    x = tokens()
    x.requires_grad_(False)
    base = model(x)
    for t in (0, 13, T - 1):
        x2 = x.clone()
        x2[:, t] = (x2[:, t] + 1) % 260
        out = model(x2)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=0)
        assert (out[:, t] - base[:, t]).abs().max() > 1e-6


@pytest.mark.parametrize("name", ["window", "mamba2", "griffin", "hybrid"])
def test_fast_kernels_match_reference_kernels(name, monkeypatch):
    model = build(PATTERNS[name])
    x = tokens()
    doc = torch.tensor([[0] * 20 + [1] * 20, [0] * 5 + [1] * 35])
    fast = model(x, doc_ids=doc)
    monkeypatch.setenv("LONGWEAVE_KERNELS", "reference")
    torch.testing.assert_close(model(x, doc_ids=doc), fast, rtol=1e-10, atol=1e-10)


def test_state_norms_reported_for_recurrent_layers():
    model = build("M-R-W-*-")
    model(tokens())
    assert sorted(model.last_state_norms) == [0, 2]
    assert all(float(v) > 0 for v in model.last_state_norms.values())


def test_flops_grow_linearly_for_recurrent_and_window_and_quadratically_for_attention():
    per_tok = {n: (models.flops_per_token(build(PATTERNS[n]), 1024), models.flops_per_token(build(PATTERNS[n]), 16384))
               for n in ("attn", "window", "mamba2", "griffin")}
    for n in ("window", "mamba2", "griffin"):
        assert per_tok[n][1] == pytest.approx(per_tok[n][0], rel=0.01)
    assert per_tok["attn"][1] > 1.5 * per_tok["attn"][0]
    m = build("M").layers[0].mixer
    assert m.flops_per_token(1024) > 0 and build("R").layers[0].mixer.flops_per_token(1024) > 0


def test_mamba2_init_and_no_weight_decay():
    model = build("MR")
    mixer = model.layers[0].mixer
    dt = torch.nn.functional.softplus(mixer.dt_bias)
    assert (dt > 0.9e-3).all() and (dt < 0.11).all()
    A = torch.exp(mixer.A_log)
    assert (A >= 1).all() and (A <= 16).all()
    lam = model.layers[1].mixer.rglru.a_param
    ac = torch.sigmoid(lam) ** 8
    assert (ac >= 0.9 - 1e-9).all() and (ac <= 0.999 + 1e-9).all()
    nwd = model.no_weight_decay_names()
    for leaf in ("A_log", "D", "dt_bias", "a_param"):
        assert any(n.endswith(leaf) for n in nwd)
    assert "layers.0.mixer.in_proj_x.weight" not in nwd


@pytest.mark.parametrize("t", [15, 16, 40, 43])
def test_banded_window_attention_equals_masked_attention(t):
    from kernels.attention import attention_reference
    from models.local_attention import banded_window_attention

    gen = torch.Generator().manual_seed(t)
    q = torch.randn(2, t, 4, 8, dtype=torch.float64, generator=gen)
    k, v = (torch.randn(2, t, 2, 8, dtype=torch.float64, generator=gen) for _ in range(2))
    doc = torch.tensor([[0] * 5 + [1] * (t - 5), [3] * (t - 9) + [4] * 9])
    want, _ = attention_reference(q, k, v, causal=True, window=7, q_doc_ids=doc, k_doc_ids=doc)
    torch.testing.assert_close(banded_window_attention(q, k, v, 7, doc), want, rtol=1e-12, atol=1e-12)
    want, _ = attention_reference(q, k, v, causal=True, window=7)
    torch.testing.assert_close(banded_window_attention(q, k, v, 7), want, rtol=1e-12, atol=1e-12)
