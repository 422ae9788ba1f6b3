"""The mamba-ssm SSD path (kernels/ssd/mamba.py) and the dispatcher's choice of it.

The numeric test needs mamba-ssm (a CUDA-less wheel is enough: its SSD kernels are pure Triton)
and runs them in Triton's CPU interpreter against the float64 reference, forward and every
gradient, with document resets and an initial state; it is skipped where mamba-ssm is not
installed (CI). The routing tests need nothing.
"""
from __future__ import annotations

import contextlib
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import kernels.ssd as ssd_pkg
from kernels.ssd import mamba as mamba_mod
from kernels.ssd import select_ssd_path, ssd_reference

NAMES = ("y", "final", "dx", "ddt", "dA", "dB", "dC", "dD", "dh0")


def _inputs(b, t, h, g, p, n, seed):
    gen = torch.Generator().manual_seed(seed)
    f64 = dict(generator=gen, dtype=torch.float64)
    ins = (torch.randn(b, t, h, p, **f64), F.softplus(torch.randn(b, t, h, **f64)), -torch.rand(h, **f64) - 0.2,
           torch.randn(b, t, g, n, **f64), torch.randn(b, t, g, n, **f64), torch.randn(h, **f64),
           torch.randn(b, h, p, n, **f64))
    doc = torch.sort(torch.randint(0, 3, (b, t), generator=gen), 1).values
    grads = torch.randn(b, t, h, p, **f64), torch.randn(b, h, p, n, **f64)
    return ins, doc, grads


def _grads(fn, dtype, ins, doc, gy, gf):
    leaves = [t.detach().to(dtype).requires_grad_() for t in ins]
    x, dt, A, B, C, D, h0 = leaves
    y, final = fn(x, dt, A, B, C, D=D, initial_state=h0, doc_ids=doc, return_final_state=True)
    ((y.double() * gy).sum() + (final.double() * gf).sum()).backward()
    return [y.detach(), final.detach()] + [t.grad for t in leaves]


@pytest.fixture
def interpreted_mamba(monkeypatch):
    """mamba-ssm's chunk scan made to run on CPU tensors in the interpreter: its launchers enter
    torch.cuda.device(...) and ask for the SM count, and its autotuners would time configs on a
    GPU; give them a no-op context, a small SM count and one config each."""
    if torch.cuda.is_available():
        pytest.skip("interpreter test; on a GPU tests/test_gpu_kernels.py covers mamba-ssm")
    fn = mamba_mod.load_chunk_scan()
    if fn is None:
        pytest.skip("mamba-ssm is not installed")
    from triton.runtime.autotuner import Autotuner, Heuristics

    monkeypatch.setattr(torch.cuda, "device", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda *a, **k: types.SimpleNamespace(multi_processor_count=4))
    for name, module in list(sys.modules.items()):
        if name.startswith("mamba_ssm.ops.triton"):
            for obj in list(vars(module).values()):
                while isinstance(obj, (Autotuner, Heuristics)):
                    if isinstance(obj, Autotuner):
                        monkeypatch.setattr(obj, "configs", obj.configs[:1])
                    obj = obj.fn
    return fn


@pytest.mark.parametrize("b,t,h,g,chunk", [(2, 45, 4, 2, 16), (1, 40, 2, 1, 32)])
def test_mamba_path_matches_reference(interpreted_mamba, b, t, h, g, chunk):
    ins, doc, (gy, gf) = _inputs(b, t, h, g, 16, 16, seed=t + h)
    ref = _grads(ssd_reference, torch.float64, ins, doc, gy, gf)
    got = _grads(lambda *a, **k: mamba_mod.ssd_mamba(*a, chunk_size=chunk, **k), torch.float32, ins, doc, gy, gf)
    for name, u, r in zip(NAMES, got, ref):
        assert torch.isfinite(u).all(), name
        assert ((u.double() - r).norm() / r.norm()).item() < 1e-5, name


def test_mamba_gating_and_dt_bias_match_reference(interpreted_mamba):
    """mamba-ssm does z gating and softplus(dt + dt_bias) in its kernels; our reference does them
    around the recurrence (kernels/ssd/gating.py): the two must agree, gradients included."""
    from test_ssd_gating import NAMES as GATED
    from test_ssd_gating import gated_grads, gated_inputs

    ins, doc, w = gated_inputs(2, 45, 4, 2, 16, 16, seed=9)
    ref = gated_grads(ssd_reference, torch.float64, ins, doc, w)
    got = gated_grads(lambda *a, **k: mamba_mod.ssd_mamba(*a, chunk_size=16, **k), torch.float32, ins, doc, w)
    for name, u, r in zip(GATED, got, ref):
        assert torch.isfinite(u).all(), name
        assert ((u.double() - r).norm() / r.norm()).item() < 1e-5, name


def test_auto_mode_routes_long_cuda_inputs_to_mamba(monkeypatch):
    """With mamba-ssm present and CUDA inputs (faked), auto picks it from the threshold up only;
    forced modes never pick it; without it the choice is unchanged."""
    monkeypatch.delenv("LONGWEAVE_KERNELS", raising=False)
    monkeypatch.setattr(ssd_pkg, "mamba_supports", lambda x: True)
    monkeypatch.setattr(ssd_pkg, "load_chunk_scan", lambda: (lambda *a, **k: None))
    heads = 32
    tokens = mamba_mod.MAMBA_MIN_TOKEN_HEADS // heads
    long_x = torch.empty(1, 1, 1, 64).expand(1, tokens, heads, 64)
    short_x = torch.empty(1, 1, 1, 64).expand(1, tokens - 1, heads, 64)
    assert select_ssd_path(long_x) == "mamba_ssm"
    assert select_ssd_path(short_x) == "torch"             # a CPU tensor: not CUDA for the Triton rule
    monkeypatch.setenv("LONGWEAVE_KERNELS", "triton")
    assert select_ssd_path(long_x) == "triton"
    monkeypatch.setenv("LONGWEAVE_KERNELS", "auto")
    monkeypatch.setattr(ssd_pkg, "load_chunk_scan", lambda: None)
    assert select_ssd_path(long_x) == "torch"


def test_ssd_calls_mamba_with_segments_as_seq_idx(monkeypatch):
    """The dispatcher hands mamba-ssm our segment ids as seq_idx and its default chunk."""
    seen = {}

    def fake(x, dt, A, B, C, chunk, *, D, initial_states, seq_idx, return_final_states, z, dt_bias,
             dt_softplus):
        seen.update(chunk=chunk, seq_idx=seq_idx, h0=initial_states, D=D)
        return x * 2, torch.ones(x.shape[0], x.shape[2], x.shape[3], B.shape[3], dtype=torch.bfloat16)

    monkeypatch.delenv("LONGWEAVE_KERNELS", raising=False)
    monkeypatch.setattr(ssd_pkg, "select_ssd_path", lambda x, chunk_size=64: "mamba_ssm")
    monkeypatch.setattr(mamba_mod, "load_chunk_scan", lambda: fake)
    ins, doc, _ = _inputs(1, 12, 2, 1, 4, 8, seed=3)
    x, dt, A, B, C, D, h0 = (t.float() for t in ins)
    doc = torch.tensor([[5, 5, 5, 9, 9, 5, 5, 5, 5, 2, 2, 2]])
    y, final = ssd_pkg.ssd(x, dt, A, B, C, D=D, initial_state=h0, doc_ids=doc, return_final_state=True)
    assert torch.equal(y, x * 2) and final.dtype == torch.float32
    assert seen["chunk"] == mamba_mod.MAMBA_CHUNK and seen["D"] is not None and seen["h0"] is not None
    assert seen["seq_idx"].dtype == torch.int32
    assert seen["seq_idx"].tolist() == [[0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3]]
