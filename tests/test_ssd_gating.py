"""mamba-ssm's optional SSD extras on every path: Δ = softplus(dt + dt_bias) and y ⊙ silu(z).

The reference applies them around the plain recurrence; the chunked path (float64) and the
Triton kernels (interpreter, float32) must equal it, outputs and every gradient including
d dt_bias and dz, with document resets and an initial state. (The mamba-ssm path, which does
them in its own kernels, is checked against the same reference in test_ssd_mamba.py.)
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels.dispatch as dispatch
from kernels.ssd import ssd, ssd_chunked, ssd_reference

NAMES = ("y", "final", "dx", "ddt", "dA", "dB", "dC", "dD", "dh0", "dz", "ddt_bias")


def gated_inputs(b, t, h, g, p, n, seed):
    gen = torch.Generator().manual_seed(seed)
    f64 = dict(generator=gen, dtype=torch.float64)
    ins = (torch.randn(b, t, h, p, **f64), torch.randn(b, t, h, **f64) - 1.0, -torch.rand(h, **f64) - 0.2,
           torch.randn(b, t, g, n, **f64), torch.randn(b, t, g, n, **f64), torch.randn(h, **f64),
           torch.randn(b, h, p, n, **f64), torch.randn(b, t, h, p, **f64), torch.randn(h, **f64) * 0.5)
    doc = torch.sort(torch.randint(0, 3, (b, t), generator=gen), 1).values
    return ins, doc, (torch.randn(b, t, h, p, **f64), torch.randn(b, h, p, n, **f64))


def gated_grads(fn, dtype, ins, doc, weights):
    leaves = [t.detach().to(dtype).requires_grad_() for t in ins]
    x, dt, A, B, C, D, h0, z, bias = leaves
    y, final = fn(x, dt, A, B, C, D=D, initial_state=h0, doc_ids=doc, return_final_state=True,
                  z=z, dt_bias=bias, dt_softplus=True)
    ((y.double() * weights[0]).sum() + (final.double() * weights[1]).sum()).backward()
    return [y.detach(), final.detach()] + [t.grad for t in leaves]


def _rel(u, r):
    assert torch.isfinite(u).all()
    return ((u.double() - r).norm() / r.norm()).item()


def test_reference_applies_bias_softplus_then_gates():
    ins, doc, _ = gated_inputs(2, 19, 4, 2, 8, 16, seed=1)
    x, dt, A, B, C, D, h0, z, bias = ins
    y, final = ssd_reference(x, dt, A, B, C, D=D, initial_state=h0, doc_ids=doc, return_final_state=True,
                             z=z, dt_bias=bias, dt_softplus=True)
    y0, final0 = ssd_reference(x, F.softplus(dt + bias), A, B, C, D=D, initial_state=h0, doc_ids=doc,
                               return_final_state=True)
    torch.testing.assert_close(y, y0 * F.silu(z), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, final0, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(y, y0)          # the gate does something on these inputs


def test_chunked_path_with_gating_matches_reference():
    ins, doc, w = gated_inputs(2, 37, 4, 2, 8, 16, seed=2)
    ref = gated_grads(ssd_reference, torch.float64, ins, doc, w)
    got = gated_grads(lambda *a, **k: ssd_chunked(*a, chunk_size=8, **k), torch.float64, ins, doc, w)
    for name, u, r in zip(NAMES, got, ref):
        assert _rel(u, r) < 1e-10, name


def test_triton_path_with_gating_matches_reference(monkeypatch):
    pytest.importorskip("triton")
    from kernels.ssd.triton import ssd_triton

    monkeypatch.setattr(dispatch, "POISON_OUTPUTS", True)
    ins, doc, w = gated_inputs(1, 40, 4, 2, 16, 16, seed=3)
    ref = gated_grads(ssd_reference, torch.float64, ins, doc, w)
    got = gated_grads(lambda *a, **k: ssd_triton(*a, chunk_size=16, **k), torch.float32, ins, doc, w)
    for name, u, r in zip(NAMES, got, ref):
        assert _rel(u, r) < 1e-5, name


def test_dispatcher_passes_the_extras_and_checks_shapes(monkeypatch):
    monkeypatch.setenv("LONGWEAVE_KERNELS", "torch")
    ins, doc, _ = gated_inputs(1, 12, 2, 1, 4, 8, seed=4)
    x, dt, A, B, C, D, h0, z, bias = ins
    got = ssd(x, dt, A, B, C, D=D, doc_ids=doc, z=z, dt_bias=bias, dt_softplus=True, chunk_size=4)
    ref = ssd_reference(x, dt, A, B, C, D=D, doc_ids=doc, z=z, dt_bias=bias, dt_softplus=True)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="z must have x's shape"):
        ssd(x, dt, A, B, C, z=z[:, :5])
    with pytest.raises(ValueError, match="dt_bias must have A's shape"):
        ssd(x, dt, A, B, C, dt_bias=bias[:1])
