"""SP hooks for sliding-window attention, causal conv1d, SSD and the linear scan against the
single-process kernels: outputs, final states and all gradients in float64 for P = 2, 3, 4,
with packed documents whose boundaries fall inside and across rank slices."""
from __future__ import annotations

import pytest
import torch
from test_distattn import packed_docs

from kernels.attention import attention_reference
from kernels.conv1d import causal_conv1d
from kernels.rglru import linear_scan
from kernels.ssd import ssd_chunked
from parallel.sequence import SequenceParallelHooks

T = 24


def _leaves(*xs):
    return [x.detach().clone().requires_grad_(True) for x in xs]


def _slice(x, rank, world):
    n = x.shape[1] // world
    return x.detach()[:, rank * n:(rank + 1) * n].clone().requires_grad_(True)


def window_check(rank, world, window, hkv):
    torch.manual_seed(1)
    q, k, v = _leaves(torch.randn(2, T, 4, 8, dtype=torch.float64), torch.randn(2, T, hkv, 8, dtype=torch.float64),
                      torch.randn(2, T, hkv, 8, dtype=torch.float64))
    do = torch.randn(2, T, 4, 8, dtype=torch.float64)
    docs = packed_docs(2, T)
    o_ref, _ = attention_reference(q, k, v, causal=True, window=window, q_doc_ids=docs, k_doc_ids=docs)
    o_ref.backward(do)
    ql, kl, vl = (_slice(x, rank, world) for x in (q, k, v))
    n = T // world
    sl = slice(rank * n, (rank + 1) * n)
    o = SequenceParallelHooks().attention(ql, kl, vl, causal=True, window=window, doc_ids=docs[:, sl])
    o.backward(do[:, sl])
    return max(float((a - b).abs().max()) for a, b in
               [(o, o_ref[:, sl]), (ql.grad, q.grad[:, sl]), (kl.grad, k.grad[:, sl]), (vl.grad, v.grad[:, sl])])


def conv_check(rank, world, width):
    torch.manual_seed(2)
    x, w, bias = _leaves(torch.randn(2, T, 6, dtype=torch.float64), torch.randn(6, width, dtype=torch.float64),
                         torch.randn(6, dtype=torch.float64))
    dy = torch.randn(2, T, 6, dtype=torch.float64)
    docs = packed_docs(2, T)
    causal_conv1d(x, w, bias, doc_ids=docs, activation="silu").backward(dy)
    y_ref = causal_conv1d(x, w, bias, doc_ids=docs, activation="silu").detach()
    xl = _slice(x, rank, world)
    wl, bl = _leaves(w, bias)
    n = T // world
    sl = slice(rank * n, (rank + 1) * n)
    y = SequenceParallelHooks().causal_conv1d(causal_conv1d, xl, wl, bl, doc_ids=docs[:, sl], activation="silu")
    y.backward(dy[:, sl])
    err = max(float((y - y_ref[:, sl]).abs().max()), float((xl.grad - x.grad[:, sl]).abs().max()))
    return err, wl.grad, bl.grad, w.grad, bias.grad


def ssd_check(rank, world, ngroups):
    torch.manual_seed(3)
    b, h, p, n_state = 2, 4, 3, 5
    x, B, C = _leaves(torch.randn(b, T, h, p, dtype=torch.float64), torch.randn(b, T, ngroups, n_state, dtype=torch.float64),
                      torch.randn(b, T, ngroups, n_state, dtype=torch.float64))
    dt, A, D, s0 = _leaves(torch.rand(b, T, h, dtype=torch.float64) * 0.5 + 0.05, -torch.rand(h, dtype=torch.float64) - 0.2,
                           torch.randn(h, dtype=torch.float64), torch.randn(b, h, p, n_state, dtype=torch.float64))
    docs = packed_docs(b, T)
    dy, dfinal = torch.randn(b, T, h, p, dtype=torch.float64), torch.randn(b, h, p, n_state, dtype=torch.float64)
    y_ref, f_ref = ssd_chunked(x, dt, A, B, C, D=D, initial_state=s0, doc_ids=docs, return_final_state=True, chunk_size=4)
    ((y_ref * dy).sum() + (f_ref * dfinal).sum()).backward()
    xl, dtl, Bl, Cl = (_slice(t, rank, world) for t in (x, dt, B, C))
    Al, Dl, s0l = _leaves(A, D, s0)
    n = T // world
    sl = slice(rank * n, (rank + 1) * n)
    y, f = SequenceParallelHooks().ssd(ssd_chunked, xl, dtl, Al, Bl, Cl, D=Dl, doc_ids=docs[:, sl],
                                       initial_state=s0l, chunk_size=4)
    last = rank == world - 1
    ((y * dy[:, sl]).sum() + (f * dfinal).sum() * last).backward()
    err = max(float((a - r).abs().max()) for a, r in [(y, y_ref[:, sl]), (xl.grad, x.grad[:, sl]), (dtl.grad, dt.grad[:, sl]),
                                                       (Bl.grad, B.grad[:, sl]), (Cl.grad, C.grad[:, sl])])
    if last:
        err = max(err, float((f - f_ref).abs().max()))
    return err, [Al.grad, Dl.grad, s0l.grad], [A.grad, D.grad, s0.grad]


def scan_check(rank, world):
    torch.manual_seed(4)
    a = (torch.rand(2, T, 5, dtype=torch.float64) * 0.6 + 0.3).requires_grad_(True)
    x, s0 = _leaves(torch.randn(2, T, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64))
    docs = packed_docs(2, T)
    dh, df = torch.randn(2, T, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    h_ref, f_ref = linear_scan(a, x, initial_state=s0, doc_ids=docs, return_final_state=True)
    ((h_ref * dh).sum() + (f_ref * df).sum()).backward()
    al, xl = _slice(a, rank, world), _slice(x, rank, world)
    (s0l,) = _leaves(s0)
    n = T // world
    sl = slice(rank * n, (rank + 1) * n)
    h, f = SequenceParallelHooks().linear_scan(linear_scan, al, xl, doc_ids=docs[:, sl], initial_state=s0l)
    last = rank == world - 1
    ((h * dh[:, sl]).sum() + (f * df).sum() * last).backward()
    err = max(float((u - r).abs().max()) for u, r in [(h, h_ref[:, sl]), (al.grad, a.grad[:, sl]), (xl.grad, x.grad[:, sl])])
    if last:
        err = max(err, float((f - f_ref).abs().max()))
    return err, s0l.grad, s0.grad


@pytest.fixture
def all_pools(pool2, pool3, pool4):
    return (pool2, pool3, pool4)


@pytest.mark.parametrize("window,hkv", [(3, 2), (10, 1)])     # 10: the halo spans two ranks at P = 4
def test_window_attention_halo(all_pools, window, hkv):
    for pool in all_pools:
        assert max(pool.run(window_check, window, hkv)) < 1e-10


@pytest.mark.parametrize("width", [4, 8])
def test_conv_halo(all_pools, width):
    for pool in all_pools:
        out = pool.run(conv_check, width)
        assert max(o[0] for o in out) < 1e-10
        assert torch.allclose(sum(o[1] for o in out), out[0][3], atol=1e-10)   # weight grads add up over ranks
        assert torch.allclose(sum(o[2] for o in out), out[0][4], atol=1e-10)


@pytest.mark.parametrize("ngroups", [1, 2])
def test_ssd_state_passing(all_pools, ngroups):
    for pool in all_pools:
        out = pool.run(ssd_check, ngroups)
        assert max(o[0] for o in out) < 1e-9
        for i in range(3):                                                      # A, D, initial state
            assert torch.allclose(sum(o[1][i] for o in out), out[0][2][i], atol=1e-9)


def test_linear_scan_state_passing(all_pools):
    for pool in all_pools:
        out = pool.run(scan_check)
        assert max(o[0] for o in out) < 1e-10
        assert torch.allclose(sum(o[1] for o in out), out[0][2], atol=1e-10)
