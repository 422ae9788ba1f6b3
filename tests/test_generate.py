"""Step mode and generation: stepping token by token = the parallel forward (from an empty
cache and from a prefill), and LanguageModel.generate = naive re-running of the forward."""
from __future__ import annotations

import pytest
import torch

import models

PATTERNS = {"attn": "(*-)x2", "window": "W-W-", "mamba2": "M-M", "griffin": "R-R-", "hybrid": "M-R-W-*-"}


def build(pattern: str) -> models.LanguageModel:
    torch.manual_seed(0)
    cfg = models.ModelConfig(pattern=pattern, d_model=32, n_heads=4, n_kv_heads=1, window=6, d_state=8,
                             ssm_headdim=8, ssm_ngroups=2, ssm_chunk_size=8, lru_heads=2)
    return models.build(cfg).double()


def tokens(b=2, t=23, seed=3):
    return torch.randint(0, 260, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(PATTERNS))
def test_stepping_from_empty_cache_equals_forward(name):
    model = build(PATTERNS[name])
    x = tokens()
    full = model(x)
    caches = model.init_cache(2, dtype=torch.float64)
    outs = []
    for t in range(x.shape[1]):
        logits, caches = model.step(x[:, t], caches)
        outs.append(logits)
    torch.testing.assert_close(torch.stack(outs, 1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("prefill", [1, 4, 15])
def test_prefill_then_step_equals_forward(name, prefill):
    model = build(PATTERNS[name])
    x = tokens()
    full = model(x)
    logits, caches = model(x[:, :prefill], return_states=True)
    outs = [logits]
    for t in range(prefill, x.shape[1]):
        step_logits, caches = model.step(x[:, t], caches)
        outs.append(step_logits[:, None])
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["attn", "hybrid"])
def test_generate_greedy_equals_naive_rerun(name):
    model = build(PATTERNS[name])
    prompt = tokens(t=5)
    got = model.generate(prompt, 8)
    seq = prompt
    for _ in range(8):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(got, seq)


def test_generate_sampling_and_eos():
    model = build(PATTERNS["mamba2"])
    prompt = tokens(t=4)
    a = model.generate(prompt, 6, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    b = model.generate(prompt, 6, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (2, 10)
    greedy = model.generate(prompt, 6)
    eos = int(greedy[0, 4])
    stopped = model.generate(prompt, 6, eos_id=eos)
    assert (stopped[0, 4:] == eos).all()
    with pytest.raises(ValueError, match="non-empty"):
        model.generate(prompt[:, :0], 3)
