"""The interpreter checks of tests/test_triton_*.py again on a CUDA device at real sizes: every
fused kernel, forward and backward, against a float64 path (the float64 reference, or a torch
path that is itself tested against it), with NaN-poisoned outputs. Marked `gpu`: skipped
without CUDA (tests/conftest.py)."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import kernels.dispatch as dispatch
from kernels.attention import attention, attention_reference, select_attention_path
from kernels.conv1d import causal_conv1d_torch
from kernels.rglru import linear_scan_torch
from kernels.ssd import ssd_chunked

pytestmark = pytest.mark.gpu
DEV = "cuda"
os.environ.setdefault("LONGWEAVE_AUTOTUNE", "0")  # one block config per kernel variant: compile once, not ten times


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    monkeypatch.setattr(dispatch, "POISON_OUTPUTS", True)


def _rel(got, ref):
    got, ref = got.double(), ref.double()
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(got), fin), "non-finite pattern differs (unwritten element?)"
    return ((got[fin] - ref[fin]).norm() / ref[fin].norm()).item()


def _grads(fn, dtype, tensors, weights, **kw):
    ins = [t.detach().to(dtype).requires_grad_() for t in tensors]
    outs = fn(*ins, **kw)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((torch.where(torch.isfinite(o), o.double(), 0) * w).sum() for o, w in zip(outs, weights))
    loss.backward()
    return [o.detach() for o in outs] + [t.grad for t in ins]


ATTN = [  # b, tq, tk, h, hkv, d, causal, window, docs, q_offset, k_offset
    (2, 1024, 1024, 8, 2, 128, True, None, False, 0, 0),
    (1, 1000, 1000, 4, 1, 64, True, 256, True, 0, 0),
    (1, 512, 1536, 4, 4, 128, True, None, False, 1024, 0),
    (1, 700, 700, 4, 2, 128, False, 100, True, 0, 0),
]


@pytest.mark.parametrize("case", ATTN)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_gpu_attention(case, dtype, tol):
    from kernels.attention.triton import attention_triton

    b, tq, tk, h, hkv, d, causal, window, docs, qo, ko = case
    g = torch.Generator(device=DEV).manual_seed(tq)
    q = torch.randn(b, tq, h, d, device=DEV, dtype=torch.float64, generator=g)
    k = torch.randn(b, tk, hkv, d, device=DEV, dtype=torch.float64, generator=g)
    v = torch.randn(b, tk, hkv, d, device=DEV, dtype=torch.float64, generator=g)
    qd = kd = None
    if docs:
        qd = torch.sort(torch.randint(0, 5, (b, tq), device=DEV, generator=g), 1).values
        kd = torch.sort(torch.randint(0, 5, (b, tk), device=DEV, generator=g), 1).values
    kw = dict(causal=causal, window=window, q_doc_ids=qd, k_doc_ids=kd, q_offset=qo, k_offset=ko)
    weights = (torch.randn(b, tq, h, d, device=DEV, dtype=torch.float64),
               torch.randn(b, h, tq, device=DEV, dtype=torch.float64))
    ref = _grads(attention_reference, torch.float64, (q, k, v), weights, **kw)
    got = _grads(attention_triton, dtype, (q, k, v), weights, **kw)
    for name, u, r in zip(("o", "lse", "dq", "dk", "dv"), got, ref):
        assert _rel(u, r) < tol, name


def test_gpu_attention_dispatch_uses_triton_for_lse():
    q = torch.randn(1, 256, 4, 64, device=DEV, dtype=torch.bfloat16)
    assert select_attention_path(q, 256, 0, 0, True) == "triton"
    o, lse = attention(q, q, q, causal=True, return_lse=True)
    o_ref, lse_ref = attention_reference(q.double(), q.double(), q.double(), causal=True)
    assert _rel(o, o_ref) < 2e-2 and _rel(lse, lse_ref) < 1e-2


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("chunk", [64, 256])
@pytest.mark.parametrize("impl", ["ours", "mamba_ssm"])
def test_gpu_ssd(dtype, tol, chunk, impl):
    from kernels.ssd.mamba import load_chunk_scan, ssd_mamba
    from kernels.ssd.triton import ssd_triton

    if impl == "mamba_ssm" and load_chunk_scan() is None:
        pytest.skip("mamba-ssm is not installed")
    fused = ssd_triton if impl == "ours" else ssd_mamba

    b, t, h, g_, p, n = 2, 1500, 8, 2, 64, 128
    gen = torch.Generator(device=DEV).manual_seed(chunk)
    f64 = dict(device=DEV, dtype=torch.float64, generator=gen)
    x = torch.randn(b, t, h, p, **f64)
    dt = F.softplus(torch.randn(b, t, h, **f64) - 2)
    A = -torch.rand(h, **f64) - 0.5
    B, C = torch.randn(b, t, g_, n, **f64), torch.randn(b, t, g_, n, **f64)
    D, h0 = torch.randn(h, **f64), torch.randn(b, h, p, n, **f64)
    doc = torch.sort(torch.randint(0, 4, (b, t), device=DEV, generator=gen), 1).values
    weights = (torch.randn(b, t, h, p, **f64), torch.randn(b, h, p, n, **f64))

    def call(fn, x, dt, A, B, C, D, h0, **kw):
        return fn(x, dt, A, B, C, D=D, initial_state=h0, doc_ids=doc, return_final_state=True, chunk_size=chunk)

    ref = _grads(lambda *a: call(ssd_chunked, *a), torch.float64, (x, dt, A, B, C, D, h0), weights)
    got = _grads(lambda *a: call(fused, *a), dtype, (x, dt, A, B, C, D, h0), weights)
    for name, u, r in zip(("y", "final", "dx", "ddt", "dA", "dB", "dC", "dD", "dh0"), got, ref):
        assert _rel(u, r) < tol, name


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_gpu_linear_scan(dtype, tol):
    from kernels.rglru.triton import linear_scan_triton

    b, t, d = 2, 3000, 1000
    gen = torch.Generator(device=DEV).manual_seed(1)
    a = torch.rand(b, t, d, device=DEV, dtype=torch.float64, generator=gen) * 0.2 + 0.8
    x = torch.randn(b, t, d, device=DEV, dtype=torch.float64, generator=gen)
    h0 = torch.randn(b, d, device=DEV, dtype=torch.float64, generator=gen)
    doc = torch.sort(torch.randint(0, 4, (b, t), device=DEV, generator=gen), 1).values
    weights = (torch.randn(b, t, d, device=DEV, dtype=torch.float64), torch.randn(b, d, device=DEV, dtype=torch.float64))

    def call(fn, a, x, h0):
        return fn(a, x, initial_state=h0, doc_ids=doc, return_final_state=True)

    ref = _grads(lambda *z: call(linear_scan_torch, *z), torch.float64, (a, x, h0), weights)
    got = _grads(lambda *z: call(linear_scan_triton, *z), dtype, (a, x, h0), weights)
    for name, u, r in zip(("h", "final", "da", "dx", "dh0"), got, ref):
        assert _rel(u, r) < tol, name


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_gpu_conv1d(dtype, tol):
    from kernels.conv1d.triton import causal_conv1d_triton

    b, t, c, k = 2, 2000, 768, 4
    gen = torch.Generator(device=DEV).manual_seed(2)
    f64 = dict(device=DEV, dtype=torch.float64, generator=gen)
    x, w, bias, left = torch.randn(b, t, c, **f64), torch.randn(c, k, **f64), torch.randn(c, **f64), \
        torch.randn(b, k - 1, c, **f64)
    doc = torch.sort(torch.randint(0, 4, (b, t), device=DEV, generator=gen), 1).values
    weights = (torch.randn(b, t, c, device=DEV, dtype=torch.float64),)

    def call(fn, x, w, bias, left):
        return fn(x, w, bias, doc_ids=doc, left_context=left, activation="silu")

    ref = _grads(lambda *z: call(causal_conv1d_torch, *z), torch.float64, (x, w, bias, left), weights)
    got = _grads(lambda *z: call(causal_conv1d_triton, *z), dtype, (x, w, bias, left), weights)
    for name, u, r in zip(("y", "dx", "dw", "dbias", "dleft"), got, ref):
        assert _rel(u, r) < tol, name
