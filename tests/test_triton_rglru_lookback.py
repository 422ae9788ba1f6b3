"""The chained-carry ('lookback') Triton linear scan (kernels/rglru/triton_lookback.py) vs the
float64 sequential reference: h, the final state, and gradients of a, x and the initial state
(through h and the final state), with document resets (also at tile edges), ragged tile and channel
edges, several time tiles and channel blocks, NaN-poisoned outputs; and the switch that picks it.
Runs in Triton's CPU interpreter off-GPU (tiles of 8 tokens × 16 channels there)."""
from __future__ import annotations

import pytest
import torch

import kernels.dispatch as dispatch
from kernels.rglru import linear_scan, linear_scan_reference

pytest.importorskip("triton")

from kernels.rglru import triton_lookback  # noqa: E402
from kernels.rglru.triton_lookback import linear_scan_lookback  # noqa: E402
from tests.test_triton_rglru import _rel, _run  # noqa: E402


def _case(b, t, d, with_h0, docs, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(b, t, d, generator=g, dtype=torch.float64) * 0.6 + 0.4
    x = torch.randn(b, t, d, generator=g, dtype=torch.float64)
    h0 = torch.randn(b, d, generator=g, dtype=torch.float64) if with_h0 else None
    doc = torch.sort(torch.randint(0, 3, (b, t), generator=g), 1).values if docs else None
    if docs and t > 16:
        doc[:, 16:] += 5                      # a reset exactly at a tile edge (token 16)
    return a, x, h0, doc, torch.randn(b, t, d, generator=g, dtype=torch.float64), \
        torch.randn(b, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("b,t,d,with_h0,docs,dtype,tol", [
    (2, 29, 20, True, True, torch.float32, 1e-5),     # 4 time tiles (last ragged), 2 channel blocks (ragged)
    (1, 8, 16, False, False, torch.float32, 1e-5),    # exactly one tile
    (1, 5, 3, True, True, torch.float32, 1e-5),
    (2, 30, 40, True, True, torch.bfloat16, 2e-2),
])
def test_lookback_scan_matches_reference(b, t, d, with_h0, docs, dtype, tol, monkeypatch):
    monkeypatch.setattr(dispatch, "POISON_OUTPUTS", True)
    a, x, h0, doc, gh, gf = _case(b, t, d, with_h0, docs, seed=b * 100 + t)
    ref = _run(linear_scan_reference, a, x, h0, doc, gh, gf, torch.float64)
    got = _run(linear_scan_lookback, a, x, h0, doc, gh, gf, dtype)
    for name, u, r in zip(("h", "final", "da", "dx", "dh0"), got, ref):
        assert _rel(u, r) < tol, name


def test_env_switch_picks_the_lookback_scan(monkeypatch):
    monkeypatch.setenv("LONGWEAVE_KERNELS", "triton")
    monkeypatch.setenv("LONGWEAVE_SCAN", "lookback")
    calls = []
    real = triton_lookback.linear_scan_lookback
    monkeypatch.setattr(triton_lookback, "linear_scan_lookback", lambda *a, **k: calls.append(1) or real(*a, **k))
    a, x = torch.rand(1, 12, 8) * 0.9, torch.randn(1, 12, 8)
    assert _rel(linear_scan(a, x), linear_scan_reference(a.double(), x.double())) < 1e-5
    assert calls == [1]
    monkeypatch.delenv("LONGWEAVE_SCAN")
    assert dispatch.scan_variant() == "tiled"
    monkeypatch.setenv("LONGWEAVE_SCAN", "wide")
    with pytest.raises(ValueError, match="LONGWEAVE_SCAN='wide' is not one of tiled, lookback"):
        linear_scan(a, x)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("tiles", ["", "16,128,4", "64,128,8", "32,256,8", "64,64,4"])
def test_lookback_scan_on_gpu(dtype, tol, tiles, monkeypatch):
    """Real sizes on a CUDA device (2×3000×1000: 94 time tiles chained), every benchmarked block
    shape, vs the float64 sequential reference."""
    monkeypatch.setattr(dispatch, "POISON_OUTPUTS", True)
    monkeypatch.setenv("LONGWEAVE_SCAN_TILES", tiles)
    a, x, h0, doc, gh, gf = (v.cuda() if v is not None else None for v in _case(2, 3000, 1000, True, True, seed=1))
    ref = _run(linear_scan_reference, a, x, h0, doc, gh, gf, torch.float64)
    got = _run(linear_scan_lookback, a, x, h0, doc, gh, gf, dtype)
    for name, u, r in zip(("h", "final", "da", "dx", "dh0"), got, ref):
        assert _rel(u, r) < tol, name


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # the NaN it checks for
def test_a_carry_that_never_arrives_gives_nan_not_a_hang(monkeypatch):
    """The wait for the previous tile's carry is bounded: launched without tile 0 (its programs'
    tickets skipped), tiles 1 and 2 give up after MAX_SPINS polls and write NaN."""
    import triton.language as tl

    monkeypatch.setattr(triton_lookback, "MAX_SPINS", tl.constexpr(3))
    t, d = 24, 16                                    # 3 time tiles of 8 in the interpreter
    a, x = torch.rand(1, t, d) * 0.5 + 0.5, torch.randn(1, t, d)
    h, final = torch.zeros(1, t, d), torch.zeros(1, d)
    carry = torch.full((2, 1, d), triton_lookback.SENTINEL.value, dtype=torch.int32)
    ticket = torch.ones(1, dtype=torch.int32)        # tile 0 never runs
    triton_lookback.lookback_fwd_kernel[(2,)](a, x, h, final, final, final, carry, ticket, t, d, 3, 1, 1,
                                             HAS_H0=False, HAS_DOC=False, BLOCK_T=8, BLOCK_D=16)
    assert torch.isnan(h[:, 8:]).all() and torch.isnan(final).all() and (h[:, :8] == 0).all()
