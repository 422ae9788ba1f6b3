"""The fused RG-LRU from gate pre-activations (kernels/rglru/triton_gated.py) vs the float64
composition of the plain pieces (kernels/rglru/gated.py), and that composition vs the model's own
RG-LRU (models/griffin.py): h, the final state and the gradients of u, both gate inputs, Λ and the
initial state, with document resets, unscaled tokens, channels near a = 1 (the capped √ gradient),
ragged tiles and NaN-poisoned outputs. Runs in Triton's CPU interpreter off-GPU."""
from __future__ import annotations

import pytest
import torch

import kernels.dispatch as dispatch
from kernels.rglru import linear_scan_reference
from kernels.rglru.gated import rglru_gated_reference

pytest.importorskip("triton")

from kernels.rglru.triton_gated import rglru_gated_triton  # noqa: E402

NAMES = ("h", "final", "du", "dga", "dgx", "dlambda", "dh0")


def _rel(got, ref):
    got, ref = got.double(), ref.double()
    assert torch.isfinite(got).all(), "non-finite output (an element was not written)"
    return ((got - ref).norm() / ref.norm()).item()


def _case(b, t, d, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    f64 = dict(generator=g, dtype=torch.float64)
    lam = torch.randn(d, **f64) * 2
    lam[: d // 4] = 9.0                     # a ≈ 1 where r is small: the √ gradient cap is active
    ins = dict(u=torch.randn(b, t, d, **f64), ga=torch.randn(b, t, d, **f64) * 2, gx=torch.randn(b, t, d, **f64),
               lam=lam, h0=torch.randn(b, d, **f64))
    ins["ga"][:, :, : d // 4] -= 6.0
    doc = torch.sort(torch.randint(0, 3, (b, t), generator=g), 1).values
    unscaled = torch.rand(b, t, generator=g) < 0.2
    weights = torch.randn(b, t, d, **f64), torch.randn(b, d, **f64)
    move = lambda v: v.to(device)  # noqa: E731
    return {k: move(v) for k, v in ins.items()}, move(doc), move(unscaled), tuple(map(move, weights))


def _grads(fn, dtype, ins, doc, unscaled, weights, c=8.0):
    leaves = {k: v.detach().to(torch.float64 if dtype == torch.float64 else
                                torch.float32 if k in ("h0", "lam") else dtype).requires_grad_() for k, v in ins.items()}
    v = leaves
    h, final = fn(v["u"], v["ga"], v["gx"], v["lam"], c, initial_state=v["h0"], doc_ids=doc, unscaled=unscaled,
                  return_final_state=True)
    ((h.double() * weights[0]).sum() + (final.double() * weights[1]).sum()).backward()
    return [h.detach(), final.detach()] + [leaves[k].grad for k in ("u", "ga", "gx", "lam", "h0")]


@pytest.mark.parametrize("b,t,d,dtype,tol", [
    (2, 29, 20, torch.float32, 1e-5),      # 4 time tiles of 8 (last ragged), 2 channel blocks of 16
    (1, 21, 40, torch.bfloat16, 3e-2),
])
def test_gated_triton_matches_reference(b, t, d, dtype, tol, monkeypatch):
    monkeypatch.setattr(dispatch, "POISON_OUTPUTS", True)
    ins, doc, unscaled, weights = _case(b, t, d, seed=t)
    ref = _grads(rglru_gated_reference, torch.float64, ins, doc, unscaled, weights)
    got = _grads(rglru_gated_triton, dtype, ins, doc, unscaled, weights)
    for name, u, r in zip(NAMES, got, ref):
        assert _rel(u, r) < tol, name


def test_gated_reference_is_the_model_rglru():
    """The op's formula is models/griffin.py's RGLRU.coefficients followed by the scan, gradients
    included (so the fused kernel can stand in for it)."""
    from models.griffin import MAX_SQRT_GRAD, RGLRU

    torch.manual_seed(0)
    rglru = RGLRU(16, 2, 8.0).double()
    rglru.reset_parameters()
    u = torch.randn(2, 13, 16, dtype=torch.float64, requires_grad=True)
    unscaled = torch.rand(2, 13) < 0.3
    doc = torch.sort(torch.randint(0, 3, (2, 13)), 1).values
    w = torch.randn(2, 13, 16, dtype=torch.float64)
    a, x = rglru.coefficients(u, unscaled)
    (linear_scan_reference(a, x, doc_ids=doc) * w).sum().backward()
    want = [u.grad.clone(), rglru.a_param.grad.clone()]
    u.grad, rglru.a_param.grad = None, None
    h = rglru_gated_reference(u, rglru.gate_a(u), rglru.gate_x(u), rglru.a_param, 8.0, doc_ids=doc,
                              unscaled=unscaled, max_sqrt_grad=MAX_SQRT_GRAD)
    (h * w).sum().backward()
    assert torch.allclose(u.grad, want[0], rtol=1e-12, atol=1e-12)
    assert torch.allclose(rglru.a_param.grad, want[1], rtol=1e-12, atol=1e-12)


def test_gated_triton_rejects_mismatched_shapes():
    u = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="u, ga, gx must share one shape"):
        rglru_gated_triton(u, u, u[:, :3], torch.zeros(8), 8.0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_gated_triton_on_gpu(dtype, tol, monkeypatch):
    monkeypatch.setattr(dispatch, "POISON_OUTPUTS", True)
    ins, doc, unscaled, weights = _case(2, 3000, 1000, seed=2, device="cuda")
    ref = _grads(rglru_gated_reference, torch.float64, ins, doc, unscaled, weights)
    got = _grads(rglru_gated_triton, dtype, ins, doc, unscaled, weights)
    for name, u, r in zip(NAMES, got, ref):
        assert _rel(u, r) < tol, name
