"""Chunked SSD vs the sequential reference (float64, random inputs, forward and gradients)."""
from __future__ import annotations

import pytest
import torch

from kernels.ssd import ssd, ssd_chunked, ssd_reference

F64 = torch.float64


def make_inputs(b=2, t=29, h=4, p=3, g=2, n=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, h, p, dtype=F64, generator=gen)
    dt = torch.rand(b, t, h, dtype=F64, generator=gen) * 0.6 + 0.05
    A = -(torch.rand(h, dtype=F64, generator=gen) * 2 + 0.1)
    B = torch.randn(b, t, g, n, dtype=F64, generator=gen)
    C = torch.randn(b, t, g, n, dtype=F64, generator=gen)
    D = torch.randn(h, dtype=F64, generator=gen)
    h0 = torch.randn(b, h, p, n, dtype=F64, generator=gen)
    return [x, dt, A, B, C, D, h0]


def packed_docs(b, t):
    rows = [[0] * 7 + [1] * (t - 12) + [2] * 5, [0] * 2 + [1] * (t - 5) + [0] * 3]
    return torch.tensor(rows[:b], dtype=torch.int32)


def run(fn, inputs, doc_ids, **kw):
    x, dt, A, B, C, D, h0 = inputs
    return fn(x, dt, A, B, C, D=D, initial_state=h0, doc_ids=doc_ids, return_final_state=True, **kw)


@pytest.mark.parametrize("chunk_size", [1, 4, 8, 64])
@pytest.mark.parametrize("with_docs", [False, True])
def test_chunked_matches_reference_forward_and_grad(chunk_size, with_docs):
    inputs = [t.requires_grad_() for t in make_inputs()]
    doc_ids = packed_docs(2, 29) if with_docs else None
    y_ref, s_ref = run(ssd_reference, inputs, doc_ids)
    y, s = run(ssd_chunked, inputs, doc_ids, chunk_size=chunk_size)
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s, s_ref, rtol=1e-9, atol=1e-9)
    gy = torch.randn_like(y)
    gs = torch.randn_like(s)
    grads_ref = torch.autograd.grad((y_ref * gy).sum() + (s_ref * gs).sum(), inputs)
    grads = torch.autograd.grad((y * gy).sum() + (s * gs).sum(), inputs)
    for name, g, gr in zip("x dt A B C D h0".split(), grads, grads_ref):
        torch.testing.assert_close(g, gr, rtol=1e-8, atol=1e-8, msg=f"grad of {name}")


def test_reference_gradcheck_tiny():
    x, dt, A, B, C, D, h0 = [t.requires_grad_() for t in make_inputs(b=1, t=5, h=2, p=2, g=1, n=2)]
    doc = torch.tensor([[0, 0, 1, 1, 1]])
    fn = lambda *a: ssd_reference(*a[:5], D=a[5], initial_state=a[6], doc_ids=doc,  # noqa: E731
                                  return_final_state=True)
    assert torch.autograd.gradcheck(fn, (x, dt, A, B, C, D, h0))


@pytest.mark.parametrize("k", [1, 9, 16, 28])
def test_split_state_passing_equals_full(k):
    x, dt, A, B, C, D, h0 = make_inputs()
    doc = packed_docs(2, 29)
    y_full, s_full = ssd_chunked(x, dt, A, B, C, D=D, initial_state=h0, doc_ids=doc,
                                 return_final_state=True, chunk_size=8)
    y1, s1 = ssd_chunked(x[:, :k], dt[:, :k], A, B[:, :k], C[:, :k], D=D, initial_state=h0,
                         doc_ids=doc[:, :k], return_final_state=True, chunk_size=8)
    # the contract: the carried state always seeds token 0, callers zero it at a boundary
    reset = (doc[:, k] != doc[:, k - 1]).to(F64)[:, None, None, None]
    y2, s2 = ssd_chunked(x[:, k:], dt[:, k:], A, B[:, k:], C[:, k:], D=D, initial_state=s1 * (1 - reset),
                         doc_ids=doc[:, k:], return_final_state=True, chunk_size=8)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s2, s_full, rtol=1e-10, atol=1e-10)


def test_float32_close_to_float64_and_dispatch(monkeypatch):
    inputs = make_inputs(t=70)
    y64 = ssd(*inputs[:5], D=inputs[5], initial_state=inputs[6], chunk_size=16)
    y32 = ssd(*[t.float() for t in inputs[:5]], D=inputs[5].float(), initial_state=inputs[6].float(),
              chunk_size=16)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-4)
    monkeypatch.setenv("LONGWEAVE_KERNELS", "reference")
    torch.testing.assert_close(ssd(*inputs[:5], D=inputs[5], initial_state=inputs[6]), y64)
