"""DistAttn: causal attention over a sequence split across sp ranks (LightSeq).

Queries stay home. Key/value chunks travel un-expanded (GQA/MQA heads stay Hkv on the wire);
in the balanced schedule (schedule.py) lightly-loaded ranks instead receive a busy rank's
queries, attend them to their own K/V and send back the partial (o, lse). Partials merge by
log-sum-exp in fp32 (fp64 for fp64 inputs). The exchange for round d+1 is posted before
round d's compute, so communication overlaps computation. Fully-masked blocks (documents,
window) are neither sent nor computed. In the split round of even P (schedule.py) the owner
and the helper share the block, split the way that sends fewer bytes from the busiest rank:
- by query rows (GQA/MQA: K/V are small): the owner computes the first half of its rows; the
  helper, sent only the second half, the rest;
- by keys (when 4·Hkv > 3·H, e.g. MHA: K/V are twice the queries): the owner, sent only the first
  half of the K/V chunk, attends all its queries to it; the helper attends them to the second
  half. Per block the busiest rank then sends KV/2 + Q forward instead of KV + Q/2 (at P = 2
  exactly Ulysses' bytes) and 2Q + KV/2 backward instead of Q + KV (equal for MHA).

The backward mirrors the forward with the same table: dQ accumulates at the query owner, dK/dV
at the key/value owner; each block's gradient uses the saved final output and LSE, so the
forward's exchanges and merges are never replayed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from parallel.sequence.blockwise import acc_dtype, block_backward, block_forward, merge, row_delta
from parallel.sequence.chunks import ChunkLayout
from parallel.sequence.p2p import SPGroup
from parallel.sequence.schedule import n_offdiag_rounds, round_plan


@dataclass
class CallRecord:
    """Instrumentation for one DistAttn call (one attention layer of one step)."""
    kind: str = "attention"
    fwd_bytes: int = 0
    bwd_bytes: int = 0
    fwd_blocks: int = 0            # attention blocks this rank computed in the forward
    fwd_rounds: int = 0            # rounds in which this rank computed something (forward)
    skipped_blocks: int = 0
    extra: dict = field(default_factory=dict)


class DistAttnRun:
    """One call's inputs that are not tensors: group, chunk layout, window, scale, record."""

    def __init__(self, group: SPGroup, chunks: ChunkLayout, window: int | None, scale: float,
                 record: CallRecord):
        self.g, self.chunks, self.window, self.scale, self.record = group, chunks, window, scale, record

    def _blk(self, a: int, b: int) -> bool:
        """True when block (q_a, kv_b) must be computed."""
        return not self.chunks.skipped(a, b, self.window)

    def _kw(self, a: int, b: int, part: tuple[slice, slice] | None = None) -> dict:
        c = self.chunks
        rows, keys = part or (slice(0, c.n), slice(0, c.n))
        q_docs = None if c.doc(a) is None else c.doc(a)[:, rows]
        k_docs = None if c.doc(b) is None else c.doc(b)[:, keys]
        return dict(window=self.window, q_docs=q_docs, k_docs=k_docs,
                    q_offset=c.offset(a) + rows.start, k_offset=c.offset(b) + keys.start, scale=self.scale)

    def part(self, plan, helper: bool) -> tuple[slice, slice]:
        """(query rows, keys) of this round's block that this side computes: all of it unless the
        round is split, then the owner's first or the helper's second half of the rows or keys."""
        n = self.chunks.n
        full = slice(0, n)
        if not plan.split:
            return full, full
        half = slice(n // 2, n) if helper else slice(0, n // 2)
        return (full, half) if self.split_keys else (half, full)

    def choose_split(self, q: torch.Tensor, k: torch.Tensor) -> None:
        """Split shared blocks by keys when K/V outweigh the queries enough (module docstring)."""
        self.split_keys = 4 * k.shape[2] > 3 * q.shape[2]

    # ---------------------------------------------------------------- forward
    def post_inputs(self, d: int, kv: torch.Tensor, query_side: dict[str, tuple[torch.Tensor, int]]):
        """Post round d's input exchange: our K/V to the rank that owns the block, our query-side
        tensors to the rank that helps us; receive the K/V of the block we own and the query side
        of the rank we help (blocks the chunk layout skips are never sent). query_side maps a
        name to (tensor, its token dim); only the helper's rows travel."""
        P, r = self.g.world, self.g.rank
        p = round_plan(P, d, r)
        rows, keys = self.part(p, helper=True)[0], self.part(p, helper=False)[1]

        def helper_rows(t, dim):
            return t.narrow(dim, rows.start, rows.stop - rows.start)
        owner_kv = kv.narrow(2, keys.start, keys.stop - keys.start)     # kv: [2, B, n, Hkv, D]
        sends, recvs = [], []
        if p.send_kv_to is not None and self._blk(p.send_kv_to, r):
            sends.append((p.send_kv_to, owner_kv))
        if p.send_q_to is not None and self._blk(r, p.send_q_to):
            sends += [(p.send_q_to, helper_rows(t, dim)) for t, dim in query_side.values()]
        if p.own_from is not None and self._blk(r, p.own_from):
            recvs.append((p.own_from, "kv", torch.empty(owner_kv.shape, dtype=kv.dtype, device=kv.device)))
        if p.help_for is not None and self._blk(p.help_for, r):
            recvs += [(p.help_for, name, torch.empty(helper_rows(t, dim).shape, dtype=t.dtype, device=t.device)) for name, (t, dim) in query_side.items()]
        return self.g.exchange(sends, recvs)

    def rounds(self, pending, kv: torch.Tensor, query_side: dict[str, torch.Tensor]):
        """Yield (round plan, received inputs) for every off-diagonal round; round d+1's exchange
        is posted before round d's compute, so communication overlaps compute."""
        P, n = self.g.world, n_offdiag_rounds(self.g.world)
        for d in range(1, n + 1):
            got = pending.wait()
            pending = self.post_inputs(d + 1, kv, query_side) if d < n else None
            yield round_plan(P, d, self.g.rank), got

    # ---------------------------------------------------------------- forward
    def forward(self, q, k, v):
        r = self.g.rank
        self.choose_split(q, k)
        kv, query_side = None, {"q": (q, 1)}
        bytes0 = self.g.bytes_sent
        pending = None
        if n_offdiag_rounds(self.g.world):
            kv = torch.stack([k, v])                                 # one message, Hkv heads
            pending = self.post_inputs(1, kv, query_side)
        o, lse = block_forward(q, k, v, **self._kw(r, r))
        self.record.fwd_blocks, self.record.fwd_rounds = 1, 1
        results = []
        acc = acc_dtype(q.dtype)
        for p, got in self.rounds(pending, kv, query_side):
            sends, recvs = [], []
            did = False
            if "kv" in got:
                mine = self.part(p, helper=False)
                o_b, lse_b = block_forward(q[:, mine[0]], got["kv"][0], got["kv"][1], **self._kw(r, p.own_from, mine))
                o, lse = merge_rows(o, lse, o_b, lse_b, mine[0])
                did = True
            if "q" in got:
                helped = self.part(p, helper=True)
                o_h, lse_h = block_forward(got["q"], k[:, helped[1]], v[:, helped[1]],
                                           **self._kw(p.help_for, r, helped))
                sends.append((p.help_for, o_h.to(q.dtype)))
                sends.append((p.help_for, lse_h.contiguous()))
                did = True
            theirs = self.part(p, helper=True)[0]
            if p.send_q_to is not None and self._blk(r, p.send_q_to):
                recvs.append((p.send_q_to, "o", torch.empty(q[:, theirs].shape, dtype=q.dtype, device=q.device)))
                recvs.append((p.send_q_to, "lse", torch.empty(lse[..., theirs].shape, dtype=acc, device=q.device)))
            self.record.fwd_blocks += did
            self.record.fwd_rounds += did
            if sends or recvs:
                results.append((theirs, self.g.exchange(sends, recvs)))
            self.record.skipped_blocks += self._count_skips(p)
        for theirs, pend in results:
            got = pend.wait()
            if "o" in got:
                o, lse = merge_rows(o, lse, got["o"].to(acc), got["lse"], theirs)
        self.record.fwd_bytes += self.g.bytes_sent - bytes0
        return o, lse

    def _count_skips(self, p) -> int:
        r = self.g.rank
        n = 0
        if p.own_from is not None and not self._blk(r, p.own_from):
            n += 1
        if p.help_for is not None and not self._blk(p.help_for, r):
            n += 1
        return n

    # ---------------------------------------------------------------- backward
    def backward(self, q, k, v, o, lse, do):
        r = self.g.rank
        acc = acc_dtype(q.dtype)
        bytes0 = self.g.bytes_sent
        self.choose_split(q, k)
        delta = row_delta(o, do)
        pending, kv, query_side = None, None, {}
        if n_offdiag_rounds(self.g.world):                # one message per tensor group; none on one rank
            kv = torch.stack([k, v])
            query_side = {"qdo": (torch.stack([q, do.to(q.dtype)]), 2),
                          "stats": (torch.stack([lse.to(acc), delta]), 3)}
            pending = self.post_inputs(1, kv, query_side)
        dq, dk, dv = block_backward(q, k, v, do, lse, delta, out=o, **self._kw(r, r))
        results = []
        for p, got in self.rounds(pending, kv, query_side):
            sends, recvs = [], []
            if "kv" in got:
                mine = self.part(p, helper=False)
                rows = mine[0]
                dq_b, dk_b, dv_b = block_backward(q[:, rows], got["kv"][0], got["kv"][1], do[:, rows],
                                                  lse[..., rows], delta[..., rows], out=o[:, rows],
                                                  **self._kw(r, p.own_from, mine))
                dq[:, rows] += dq_b
                sends.append((p.own_from, torch.stack([dk_b, dv_b])))
            if "qdo" in got:
                qr, dor = got["qdo"][0], got["qdo"][1]
                helped = self.part(p, helper=True)
                keys = helped[1]
                dq_h, dk_h, dv_h = block_backward(qr, k[:, keys], v[:, keys], dor, got["stats"][0], got["stats"][1],
                                                  **self._kw(p.help_for, r, helped))
                dk[:, keys] += dk_h
                dv[:, keys] += dv_h
                sends.append((p.help_for, dq_h))
            theirs = self.part(p, helper=True)[0]
            given = self.part(p, helper=False)[1]          # the keys of my chunk an owner computed
            if p.send_kv_to is not None and self._blk(p.send_kv_to, r):
                shape = (2, k.shape[0], given.stop - given.start, *k.shape[2:])
                recvs.append((p.send_kv_to, "dkv", torch.empty(shape, dtype=acc, device=k.device)))
            if p.send_q_to is not None and self._blk(r, p.send_q_to):
                recvs.append((p.send_q_to, "dq", torch.empty(q[:, theirs].shape, dtype=acc, device=q.device)))
            if sends or recvs:
                results.append(((theirs, given), self.g.exchange(sends, recvs)))
        for (theirs, given), pend in results:
            got = pend.wait()
            if "dkv" in got:
                dk[:, given] += got["dkv"][0]
                dv[:, given] += got["dkv"][1]
            if "dq" in got:
                dq[:, theirs] += got["dq"]
        self.record.bwd_bytes += self.g.bytes_sent - bytes0
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def merge_rows(o, lse, o_b, lse_b, rows: slice):
    """merge() of a partial result for the query rows `rows` only (the split round's halves)."""
    if rows.start == 0 and rows.stop == o.shape[1]:
        return merge(o, lse, o_b, lse_b)
    o_m, lse_m = merge(o[:, rows], lse[..., rows], o_b, lse_b)
    o, lse = o.clone(), lse.clone()
    o[:, rows], lse[..., rows] = o_m, lse_m
    return o, lse


class DistAttnFunction(torch.autograd.Function):
    """o = DistAttn(q, k, v). With `cached` = (o, lse) from an earlier forward of the same call
    (rematerialization), the forward is skipped: the node only re-saves what backward needs."""

    @staticmethod
    def forward(ctx, q, k, v, run: DistAttnRun, cached):
        if cached is None:
            o_acc, lse = run.forward(q, k, v)
            o = o_acc.to(q.dtype)
        else:
            o, lse = cached[0].clone(), cached[1].clone()
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.run = run
        run.result = (o.detach(), lse)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = ctx.run.backward(q, k, v, o, lse, do)
        return dq, dk, dv, None, None


def dist_attention(q, k, v, *, group: SPGroup, chunks: ChunkLayout, window: int | None = None,
                   scale: float | None = None, record: CallRecord | None = None, cached=None, keep=None):
    """Causal attention output [B,n,H,D] for this rank's queries over the whole sequence.

    `cached` = (o, lse) of an earlier forward skips the computation (rematerialization);
    `keep(result)` receives this call's (o, lse) so a checkpoint can cache it."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    run = DistAttnRun(group, chunks, window, scale, record or CallRecord())
    o = DistAttnFunction.apply(q, k, v, run, cached)
    if keep is not None:
        keep(run.result)
    return o
