"""Triton causal conv1d (kernels/conv1d/triton.py) vs the float64 reference: y and the gradients of
x, weight, bias and the left context, with document resets (also inside the left context), SiLU,
ragged tiles and NaN-poisoned outputs. Off-GPU the kernels run in Triton's CPU interpreter."""
from __future__ import annotations

import pytest
import torch

import kernels.dispatch as dispatch
from kernels.conv1d import causal_conv1d, causal_conv1d_reference, select_conv1d_path

pytest.importorskip("triton")

from kernels.conv1d.triton import causal_conv1d_triton  # noqa: E402


def _rel(got, ref):
    got, ref = got.double(), ref.double()
    assert torch.isfinite(got).all(), "non-finite result (an element was not written)"
    return ((got - ref).norm() / ref.norm()).item()


def _run(fn, dtype, x, w, bias, left, doc, ldoc, act, gy):
    x, w = x.detach().to(dtype).requires_grad_(), w.detach().to(dtype).requires_grad_()
    bias = bias.detach().to(dtype).requires_grad_() if bias is not None else None
    left = left.detach().to(dtype).requires_grad_() if left is not None else None
    y = fn(x, w, bias, doc_ids=doc, left_context=left, left_doc_ids=ldoc, activation=act)
    (y.double() * gy).sum().backward()
    return [y.detach(), x.grad, w.grad] + [t.grad for t in (bias, left) if t is not None]


@pytest.mark.parametrize("b,t,c,k,with_bias,with_left,docs,act,dtype,tol", [
    (2, 19, 20, 4, True, True, True, "silu", torch.float32, 1e-5),
    (1, 16, 16, 4, False, False, False, None, torch.float32, 1e-5),
    (2, 11, 5, 3, True, False, True, None, torch.float32, 1e-5),
    (1, 23, 24, 4, True, True, True, "silu", torch.bfloat16, 2e-2),
])
def test_triton_conv1d_matches_reference(b, t, c, k, with_bias, with_left, docs, act, dtype, tol, monkeypatch):
    monkeypatch.setattr(dispatch, "POISON_OUTPUTS", True)
    g = torch.Generator().manual_seed(t * 13 + c)
    f64 = dict(generator=g, dtype=torch.float64)
    x, w = torch.randn(b, t, c, **f64), torch.randn(c, k, **f64)
    bias = torch.randn(c, **f64) if with_bias else None
    left = torch.randn(b, k - 1, c, **f64) if with_left else None
    doc = torch.sort(torch.randint(0, 3, (b, t), generator=g), 1).values if docs else None
    ldoc = None
    if docs and with_left:  # left context partly from an earlier document
        ldoc = torch.cat([doc[:, :1] - 1, doc[:, :1].expand(b, k - 2)], dim=1)
    gy = torch.randn(b, t, c, **f64)
    ref = _run(causal_conv1d_reference, torch.float64, x, w, bias, left, doc, ldoc, act, gy)
    got = _run(causal_conv1d_triton, dtype, x, w, bias, left, doc, ldoc, act, gy)
    for name, u, r in zip(("y", "dx", "dw", "db/dleft", "dleft"), got, ref):
        assert _rel(u, r) < tol, name


def test_dispatcher_forced_triton(monkeypatch):
    monkeypatch.setenv("LONGWEAVE_KERNELS", "triton")
    x, w = torch.randn(1, 10, 8), torch.randn(8, 4)
    assert select_conv1d_path(x) == "triton"
    ref = causal_conv1d_reference(x.double(), w.double(), activation="silu")
    assert _rel(causal_conv1d(x, w, activation="silu"), ref) < 1e-5
