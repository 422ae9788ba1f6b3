"""Triton linear scan (kernels/rglru/triton.py) vs the float64 sequential reference: h, the final
state, and gradients of a, x and the initial state (through h and the final state), with document
resets, ragged tile edges and NaN-poisoned outputs. Runs in Triton's CPU interpreter off-GPU."""
from __future__ import annotations

import pytest
import torch

import kernels.dispatch as dispatch
from kernels.rglru import linear_scan, linear_scan_reference, select_scan_path

pytest.importorskip("triton")

from kernels.rglru.triton import linear_scan_triton  # noqa: E402


def _rel(got, ref):
    got, ref = got.double(), ref.double()
    assert torch.isfinite(got).all(), "non-finite output (an element was not written)"
    return ((got - ref).norm() / ref.norm()).item()


def _run(fn, a, x, h0, doc, g, gf, dtype):
    a, x = (t.detach().to(dtype).requires_grad_() for t in (a, x))
    s = None if h0 is None else h0.detach().to(torch.float64 if dtype == torch.float64 else torch.float32)
    if s is not None:
        s.requires_grad_()
    h, final = fn(a, x, initial_state=s, doc_ids=doc, return_final_state=True)
    ((h.double() * g).sum() + (final.double() * gf).sum()).backward()
    return [h.detach(), final.detach(), a.grad, x.grad] + ([s.grad] if s is not None else [])


@pytest.mark.parametrize("b,t,d,with_h0,docs,dtype,tol", [
    (2, 21, 20, True, True, torch.float32, 1e-5),
    (1, 16, 16, False, False, torch.float32, 1e-5),
    (1, 5, 3, False, True, torch.float32, 1e-5),
    (2, 30, 40, True, True, torch.bfloat16, 2e-2),
])
def test_triton_scan_matches_reference(b, t, d, with_h0, docs, dtype, tol, monkeypatch):
    monkeypatch.setattr(dispatch, "POISON_OUTPUTS", True)
    g = torch.Generator().manual_seed(b * 100 + t)
    a = torch.rand(b, t, d, generator=g, dtype=torch.float64) * 0.6 + 0.4
    x = torch.randn(b, t, d, generator=g, dtype=torch.float64)
    h0 = torch.randn(b, d, generator=g, dtype=torch.float64) if with_h0 else None
    doc = torch.sort(torch.randint(0, 3, (b, t), generator=g), 1).values if docs else None
    gh = torch.randn(b, t, d, generator=g, dtype=torch.float64)
    gf = torch.randn(b, d, generator=g, dtype=torch.float64)
    ref = _run(linear_scan_reference, a, x, h0, doc, gh, gf, torch.float64)
    got = _run(linear_scan_triton, a, x, h0, doc, gh, gf, dtype)
    for name, u, r in zip(("h", "final", "da", "dx", "dh0"), got, ref):
        assert _rel(u, r) < tol, name


def test_dispatcher_forced_triton(monkeypatch):
    monkeypatch.setenv("LONGWEAVE_KERNELS", "triton")
    a, x = torch.rand(1, 12, 8) * 0.9, torch.randn(1, 12, 8)
    assert select_scan_path(x) == "triton"
    assert _rel(linear_scan(a, x), linear_scan_reference(a.double(), x.double())) < 1e-5
