"""Parallel linear scan vs the sequential reference (float64, random inputs, forward and grads)."""
from __future__ import annotations

import pytest
import torch

from kernels.rglru import linear_scan, linear_scan_reference, linear_scan_torch

F64 = torch.float64


def make_inputs(b=2, t=150, d=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(b, t, d, dtype=F64, generator=gen) * 0.9 + 0.05
    x = torch.randn(b, t, d, dtype=F64, generator=gen)
    h0 = torch.randn(b, d, dtype=F64, generator=gen)
    return a, x, h0


def docs(b, t):
    row0 = [0] * 40 + [1] * (t - 40)
    row1 = [3] * 5 + [4] * 64 + [3] * (t - 69)   # a repeated id after a boundary is a new document
    return torch.tensor([row0, row1][:b])


@pytest.mark.parametrize("t", [1, 7, 64, 150, 4200])
@pytest.mark.parametrize("with_docs", [False, True])
def test_parallel_scan_matches_reference(t, with_docs):
    if t == 4200 and with_docs:
        pytest.skip("long case checks the two-level recursion once")
    a, x, h0 = (v.requires_grad_() for v in make_inputs(t=t, d=3 if t > 1000 else 6))
    doc = docs(2, t) if with_docs and t > 70 else None
    h_ref, s_ref = linear_scan_reference(a, x, initial_state=h0, doc_ids=doc, return_final_state=True)
    h, s = linear_scan_torch(a, x, initial_state=h0, doc_ids=doc, return_final_state=True)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)
    gh, gs = torch.randn_like(h), torch.randn_like(s)
    g_ref = torch.autograd.grad((h_ref * gh).sum() + (s_ref * gs).sum(), (a, x, h0))
    g = torch.autograd.grad((h * gh).sum() + (s * gs).sum(), (a, x, h0))
    for name, u, v in zip(("a", "x", "h0"), g, g_ref):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-9, msg=f"grad of {name}")


def test_zero_decay_keeps_gradients_finite():
    a, x, h0 = (v.requires_grad_() for v in make_inputs(t=90))
    a_zero = a * (torch.arange(90) % 7 != 0).to(F64)[None, :, None]
    h = linear_scan_torch(a_zero, x, initial_state=h0)
    torch.testing.assert_close(h, linear_scan_reference(a_zero, x, initial_state=h0))
    (g,) = torch.autograd.grad(h.sum(), a)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("k", [1, 40, 77, 149])
def test_split_state_passing_equals_full(k):
    a, x, h0 = make_inputs()
    doc = docs(2, 150)
    h_full, s_full = linear_scan(a, x, initial_state=h0, doc_ids=doc, return_final_state=True)
    h1, s1 = linear_scan(a[:, :k], x[:, :k], initial_state=h0, doc_ids=doc[:, :k], return_final_state=True)
    keep = (doc[:, k] == doc[:, k - 1]).to(F64)[:, None]
    h2, s2 = linear_scan(a[:, k:], x[:, k:], initial_state=s1 * keep, doc_ids=doc[:, k:],
                         return_final_state=True)
    torch.testing.assert_close(torch.cat([h1, h2], 1), h_full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s2, s_full, rtol=1e-10, atol=1e-10)


def test_dispatch_reference_mode(monkeypatch):
    a, x, h0 = make_inputs(t=20)
    h = linear_scan(a.float(), x.float(), initial_state=h0.float())
    assert h.dtype == torch.float32
    monkeypatch.setenv("LONGWEAVE_KERNELS", "reference")
    torch.testing.assert_close(linear_scan(a, x, initial_state=h0), h.double(), rtol=1e-5, atol=1e-5)
