"""Triton SSD chunk scan (kernels/ssd/triton*.py) vs the float64 sequential reference: y, the
final state and the gradients of x, dt, A, B, C, D and the initial state (through y and the final
state), with document resets, groups, ragged chunks, padded head/state dims and NaN-poisoned
outputs. Off-GPU the kernels run in Triton's CPU interpreter (tests/conftest.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels.dispatch as dispatch
from kernels.ssd import select_ssd_path, ssd, ssd_reference

pytest.importorskip("triton")

from kernels.ssd.triton import ssd_triton  # noqa: E402

NAMES = ("y", "final", "dx", "ddt", "dA", "dB", "dC", "dD", "dh0")


def _inputs(b, t, h, g, p, n, docs, with_h0, seed):
    gen = torch.Generator().manual_seed(seed)
    f64 = dict(generator=gen, dtype=torch.float64)
    x = torch.randn(b, t, h, p, **f64)
    dt = F.softplus(torch.randn(b, t, h, **f64))
    A = -torch.rand(h, **f64) - 0.2
    B, C = torch.randn(b, t, g, n, **f64), torch.randn(b, t, g, n, **f64)
    D = torch.randn(h, **f64)
    h0 = torch.randn(b, h, p, n, **f64) if with_h0 else None
    doc = torch.sort(torch.randint(0, 3, (b, t), generator=gen), 1).values if docs else None
    gy, gf = torch.randn(b, t, h, p, **f64), torch.randn(b, h, p, n, **f64)
    return (x, dt, A, B, C, D), h0, doc, gy, gf


def _run(fn, dtype, ins, h0, doc, gy, gf, **kw):
    x, dt, A, B, C, D = (t.detach().to(dtype).requires_grad_() for t in ins)
    s = None
    if h0 is not None:
        s = h0.detach().to(torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_()
    y, final = fn(x, dt, A, B, C, D=D, initial_state=s, doc_ids=doc, return_final_state=True, **kw)
    ((y.double() * gy).sum() + (final.double() * gf).sum()).backward()
    return [y.detach(), final.detach(), x.grad, dt.grad, A.grad, B.grad, C.grad, D.grad] + (
        [s.grad] if s is not None else [])


def _rel(got, ref):
    got, ref = got.double(), ref.double()
    assert torch.isfinite(got).all(), "non-finite result (an element was not written)"
    return ((got - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("b,t,h,g,p,n,chunk,docs,with_h0,dtype,tol", [
    (2, 37, 4, 2, 8, 16, 16, True, True, torch.float32, 1e-5),
    (1, 32, 2, 1, 16, 16, 16, False, False, torch.float32, 1e-5),
    (1, 40, 2, 2, 16, 32, 32, True, False, torch.float32, 1e-5),
    (1, 50, 4, 4, 12, 20, 16, True, True, torch.bfloat16, 2e-2),
])
def test_triton_ssd_matches_reference(b, t, h, g, p, n, chunk, docs, with_h0, dtype, tol, monkeypatch):
    monkeypatch.setattr(dispatch, "POISON_OUTPUTS", True)
    ins, h0, doc, gy, gf = _inputs(b, t, h, g, p, n, docs, with_h0, seed=t * 7 + h)
    ref = _run(ssd_reference, torch.float64, ins, h0, doc, gy, gf)
    got = _run(ssd_triton, dtype, ins, h0, doc, gy, gf, chunk_size=chunk)
    for name, u, r in zip(NAMES, got, ref):
        assert _rel(u, r) < tol, name


def test_dispatcher_forced_triton(monkeypatch):
    monkeypatch.setenv("LONGWEAVE_KERNELS", "triton")
    ins, h0, doc, _, _ = _inputs(1, 20, 2, 1, 8, 16, True, True, seed=5)
    assert select_ssd_path(ins[0], 16) == "triton"
    y = ssd(*[t.float() for t in ins[:5]], D=ins[5].float(), initial_state=h0.float(), doc_ids=doc, chunk_size=16)
    assert _rel(y, ssd_reference(*ins[:5], D=ins[5], initial_state=h0, doc_ids=doc)) < 1e-5


def test_any_chunk_size_gives_the_same_result():
    ins, h0, doc, _, _ = _inputs(1, 30, 2, 1, 8, 16, True, True, seed=4)
    f32 = [t.float() for t in ins]
    kw = dict(D=f32[5], initial_state=h0.float(), doc_ids=doc)
    ref = ssd_reference(*ins[:5], D=ins[5], initial_state=h0, doc_ids=doc)
    for chunk in (1, 24, 256):
        assert _rel(ssd_triton(*f32[:5], chunk_size=chunk, **kw), ref) < 1e-5
