"""Triton attention (kernels/attention/triton.py) vs the float64 reference: output, LSE and the
gradients of q, k, v (through both the output and the LSE), with outputs poisoned with NaN.

On a CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
so shapes are tiny but chosen to cross block edges (blocks are 16 there): ragged lengths,
fully-visible and diagonal blocks, rows that see no key, GQA/MQA, windows, documents, offsets.
"""
from __future__ import annotations

import pytest
import torch

import kernels.dispatch as dispatch
from kernels.attention import attention, attention_reference, select_attention_path

pytest.importorskip("triton")

from kernels.attention.triton import attention_triton  # noqa: E402

CASES = [
    # (tq, tk, h, hkv, d, causal, window, docs, q_offset, k_offset)
    (37, 37, 4, 2, 16, True, None, False, 0, 0),
    (37, 37, 2, 2, 32, False, None, False, 0, 0),
    (40, 40, 4, 1, 16, True, 6, False, 0, 0),
    (33, 33, 2, 1, 16, False, 7, False, 0, 0),
    (45, 45, 4, 2, 16, True, None, True, 0, 0),
    (19, 45, 2, 1, 16, True, 20, False, 30, 4),    # local queries x a remote key chunk
    (19, 45, 2, 2, 16, True, None, False, 0, 10),  # leading rows see no key: o = 0, lse = -inf
    (29, 29, 3, 1, 32, True, 9, True, 0, 0),
    (21, 50, 2, 1, 64, True, None, True, 40, 0),
]


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double(), ref.double()
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(got), fin), "non-finite pattern differs (unwritten or wrong -inf)"
    return ((got[fin] - ref[fin]).norm() / ref[fin].norm().clamp_min(1e-30)).item()


def _inputs(b, tq, tk, h, hkv, d, docs, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, tq, h, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, tk, hkv, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, tk, hkv, d, generator=g, dtype=torch.float64)
    qd = kd = None
    if docs:
        qd = torch.sort(torch.randint(0, 3, (b, tq), generator=g), dim=1).values.to(torch.int32)
        kd = torch.sort(torch.randint(0, 3, (b, tk), generator=g), dim=1).values.to(torch.int32)
    return q, k, v, qd, kd


def _run(fn, q, k, v, go, gl, dtype, **kw):
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    o, lse = fn(q, k, v, **kw)
    loss = (o.double() * go).sum() + (torch.where(torch.isfinite(lse), lse.double(), 0) * gl).sum()
    loss.backward()
    return [o.detach(), lse.detach(), q.grad, k.grad, v.grad]


@pytest.fixture
def poisoned(monkeypatch):
    monkeypatch.setattr(dispatch, "POISON_OUTPUTS", True)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "tq{}tk{}h{}kv{}d{}c{}w{}doc{}off{}-{}".format(*c))
def test_triton_attention_fp32_matches_reference(case, poisoned):
    tq, tk, h, hkv, d, causal, window, docs, qo, ko = case
    q, k, v, qd, kd = _inputs(2, tq, tk, h, hkv, d, docs, seed=tq * 31 + tk)
    kw = dict(causal=causal, window=window, q_doc_ids=qd, k_doc_ids=kd, q_offset=qo, k_offset=ko)
    go = torch.randn(2, tq, h, d, dtype=torch.float64)
    gl = torch.randn(2, h, tq, dtype=torch.float64)
    ref = _run(attention_reference, q, k, v, go, gl, torch.float64, **kw)
    got = _run(attention_triton, q, k, v, go, gl, torch.float32, **kw)
    for name, a, r in zip(("o", "lse", "dq", "dk", "dv"), got, ref):
        assert _rel(a, r) < 2e-5, name


def test_triton_attention_bf16_matches_reference(poisoned):
    q, k, v, qd, kd = _inputs(1, 35, 35, 4, 2, 32, True, seed=7)
    kw = dict(causal=True, window=12, q_doc_ids=qd, k_doc_ids=kd)
    go = torch.randn(1, 35, 4, 32, dtype=torch.float64)
    gl = torch.randn(1, 4, 35, dtype=torch.float64)
    ref = _run(attention_reference, q, k, v, go, gl, torch.float64, **kw)
    got = _run(attention_triton, q, k, v, go, gl, torch.bfloat16, **kw)
    for name, a, r in zip(("o", "lse", "dq", "dk", "dv"), got, ref):
        assert _rel(a, r) < 2e-2, name


def test_dispatcher_forced_triton(monkeypatch, poisoned):
    monkeypatch.setenv("LONGWEAVE_KERNELS", "triton")
    q, k, v, qd, kd = _inputs(1, 20, 20, 2, 1, 16, True, seed=3)
    assert select_attention_path(q, 20, 0, 0, True) == "triton"
    o, lse = attention(q.float(), k.float(), v.float(), causal=True, q_doc_ids=qd, k_doc_ids=kd, return_lse=True)
    o_ref, lse_ref = attention_reference(q, k, v, causal=True, q_doc_ids=qd, k_doc_ids=kd)
    assert _rel(o, o_ref) < 2e-5 and _rel(lse, lse_ref) < 2e-5


def test_unsupported_head_dim_is_a_clear_error():
    q = torch.randn(1, 8, 2, 24)
    with pytest.raises(ValueError, match="head dim"):
        attention_triton(q, q, q)
