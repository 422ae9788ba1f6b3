"""DistAttn (LightSeq) against single-process attention: schedule coverage, outputs and
gradients in float64 for P = 2, 3, 4, causal with packed documents, GQA and MQA."""
from __future__ import annotations

import math

import pytest
import torch

from kernels.attention import attention_reference
from parallel.sequence import SequenceParallelHooks
from parallel.sequence.schedule import block_of, n_offdiag_rounds, n_rounds, round_plan


@pytest.mark.parametrize("world", range(1, 10))
def test_balanced_schedule_covers_every_block_once(world):
    seen = []
    for d in range(1, n_offdiag_rounds(world) + 1):
        plans = [round_plan(world, d, r) for r in range(world)]
        for r, p in enumerate(plans):
            blk = block_of(p, r)
            if blk is not None:
                seen.append((*blk, "half" if p.split else "whole"))
            if p.own_from is not None:
                assert plans[p.own_from].send_kv_to == r       # the kv owner sends to me
            if p.help_for is not None:
                assert plans[p.help_for].send_q_to == r        # the query owner sends to me
    # each off-diagonal block exactly once; in the split round (even P, distance P/2) as two halves
    expected = [(a, b, "whole") for a in range(world) for b in range(a) if 2 * (a - b) != world]
    expected += [(a, b, "half") for a in range(world) for b in range(a) if 2 * (a - b) == world] * 2
    assert sorted(seen) == sorted(expected)
    assert n_rounds(world) <= math.ceil(world / 2) + 1


def packed_docs(batch: int, length: int) -> torch.Tensor:
    """Document ids with boundaries inside and across every plausible rank slice."""
    rows = []
    for b in range(batch):
        cuts = [5 + 3 * b, 11, 13 + b, 19]
        row = torch.zeros(length, dtype=torch.int32)
        for c in cuts:
            row[c:] += 1
        rows.append(row)
    return torch.stack(rows)


def distattn_vs_reference(rank, world, hkv, with_docs, window, t=24):
    torch.manual_seed(0)
    b, h, d = 2, 4, 8
    q = torch.randn(b, t, h, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(b, t, hkv, d, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, t, hkv, d, dtype=torch.float64, requires_grad=True)
    do = torch.randn(b, t, h, d, dtype=torch.float64)
    docs = packed_docs(b, t) if with_docs else None
    o_ref, _ = attention_reference(q, k, v, causal=True, window=window, q_doc_ids=docs, k_doc_ids=docs)
    o_ref.backward(do)
    n = t // world
    sl = slice(rank * n, (rank + 1) * n)
    ql, kl, vl = (x.detach()[:, sl].clone().requires_grad_(True) for x in (q, k, v))
    hooks = SequenceParallelHooks()
    hooks.reset_stats()
    local_docs = None if docs is None else docs[:, sl]
    if window is None:
        o = hooks.attention(ql, kl, vl, causal=True, window=None, doc_ids=local_docs)
    else:  # exercise DistAttn's own window support (the hooks route W layers to the halo path)
        from parallel.sequence import CallRecord, dist_attention
        hooks.records.append(CallRecord())
        o = dist_attention(ql, kl, vl, group=hooks.g, chunks=hooks.chunks(local_docs, n), window=window,
                           record=hooks.records[0])
    o.backward(do[:, sl])
    err = max(float((o - o_ref[:, sl]).abs().max()),
              float((ql.grad - q.grad[:, sl]).abs().max()),
              float((kl.grad - k.grad[:, sl]).abs().max()),
              float((vl.grad - v.grad[:, sl]).abs().max()))
    rec = hooks.records[0] if hooks.records else None
    return err, (rec.fwd_rounds, rec.skipped_blocks, rec.fwd_bytes, rec.bwd_bytes) if rec else None


@pytest.mark.parametrize("hkv", [4, 2, 1])
@pytest.mark.parametrize("with_docs", [False, True])
def test_distattn_matches_reference_p2_p3_p4(pool2, pool3, pool4, hkv, with_docs):
    for pool in (pool2, pool3, pool4):
        out = pool.run(distattn_vs_reference, hkv, with_docs, None)
        for err, (rounds, *_) in out:
            assert err < 1e-10
            assert rounds <= math.ceil(pool.world / 2) + 1


@pytest.mark.parametrize("hkv", [2, 4], ids=["split_rows", "split_keys"])
def test_distattn_window_skips_masked_blocks(pool4, hkv):
    out = pool4.run(distattn_vs_reference, hkv, True, 5)
    assert max(err for err, _ in out) < 1e-10
    assert sum(info[1] for _, info in out) > 0          # far blocks neither sent nor computed


@pytest.mark.parametrize("world", [5, 8])
def test_distattn_odd_and_large_p(pools, world):
    out = pools.get(world).run(distattn_vs_reference, 2, True, None, 40)
    for err, (rounds, *_) in out:
        assert err < 1e-10
        assert rounds <= math.ceil(world / 2) + 1


def test_distattn_bytes_are_unexpanded_kv(pool2):
    """P = 2, one document: rank 0 sends its K/V chunk (Hkv heads, not H) forward and again
    backward; the block (1, 0) is split by query rows, so rank 1 sends rank 0 the second half of
    its queries (forward; with dO and the row statistics backward) and gets back that half's
    (o, lse) and dQ; rank 1 sends back dK/dV of its half; nothing else travels."""
    (_, (_, _, f0, b0, *_)), (_, (_, _, f1, b1, *_)) = pool2.run(distattn_vs_reference, 1, False, None)
    kv_bytes = 2 * 2 * 12 * 1 * 8 * 8          # k and v, B=2, n=12, Hkv=1, D=8, float64
    half_q = 2 * 6 * 4 * 8 * 8                 # B=2, 6 rows, H=4, D=8, float64
    half_stats = 2 * 4 * 6 * 8                 # one [B, H, 6] float64 row statistic
    assert (f0, b0) == (kv_bytes + half_q + half_stats, kv_bytes + half_q)
    assert (f1, b1) == (half_q, kv_bytes + 2 * half_q + 2 * half_stats)


def test_distattn_mha_split_round_splits_keys(pool2):
    """P = 2, MHA (H = Hkv = 4): the shared block is split by keys, so rank 0 sends half its K/V
    forward and returns the (o, lse) of all of rank 1's queries; the busiest rank's forward bytes
    are then Ulysses' 4(P−1)/P · n·H·D. Backward: rank 0 sends the K/V half again and dQ, rank 1
    its queries with dO, the row statistics and dK/dV of the half it computed."""
    (_, (_, _, f0, b0, *_)), (_, (_, _, f1, b1, *_)) = pool2.run(distattn_vs_reference, 4, False, None)
    q_bytes = 2 * 12 * 4 * 8 * 8               # B=2, n=12, H=4, D=8, float64
    half_kv = 2 * 2 * 6 * 4 * 8 * 8            # k and v, 6 keys, Hkv=4
    stats = 2 * 4 * 12 * 8                     # one [B, H, 12] float64 row statistic
    assert (f0, b0) == (half_kv + q_bytes + stats, half_kv + q_bytes)
    assert (f1, b1) == (q_bytes, 2 * q_bytes + 2 * stats + half_kv)
    assert max(f0, f1) - stats == 4 * (2 - 1) / 2 * q_bytes      # Ulysses: q, k, v, o all-to-alls


def overlap_order(rank, world):
    """Event log of one DistAttn forward: 'post' = P2P exchange posted, 'compute' = a block."""
    import parallel.sequence.distattn as da
    from parallel.sequence.p2p import SPGroup

    events = []
    real_block, real_exchange = da.block_forward, SPGroup.exchange

    def block(*a, **k):
        events.append("compute")
        return real_block(*a, **k)

    def exchange(self, sends, recvs):
        events.append("post")
        return real_exchange(self, sends, recvs)

    da.block_forward, SPGroup.exchange = block, exchange
    try:
        torch.manual_seed(0)
        q, k, v = torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 4)
        SequenceParallelHooks().attention(q, k, v, causal=True, window=None, doc_ids=None)
    finally:
        da.block_forward, SPGroup.exchange = real_block, real_exchange
    return events


def test_next_round_transfer_is_posted_before_this_round_compute(pool4):
    for events in pool4.run(overlap_order):
        # round 1's transfer is in flight during the diagonal block, round 2's during round 1
        assert events[:2] == ["post", "compute"]
        assert events[2] == "post" and events[3] == "compute"


@pytest.mark.parametrize("world", range(1, 9))
def test_rank_work_adds_up_to_the_causal_triangle(world):
    from parallel.sequence.schedule import rank_work

    work = rank_work(world)
    assert sum(work) == world * 0.5 + world * (world - 1) / 2
    assert max(work) == min(work)                # the split round evens out even P
