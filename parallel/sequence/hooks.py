"""SequenceParallelHooks: what the mixers call as `ctx.sp` (the contract in DESIGN.md §5).

Each hook returns exactly what the single-process call would return on the full sequence,
for this rank's slice:
- attention(q, k, v, causal, window, doc_ids): global attention -> DistAttn (balanced,
  overlapped P2P); sliding window -> a K/V halo of window−1 tokens plus local attention;
- causal_conv1d(conv_fn, ...): a halo of the k−1 inputs before the chunk;
- ssd(ssd_fn, ...), linear_scan(scan_fn, ...): exact state passing (recurrent.py).

Rematerialization: parallel.checkpointing runs each checkpointed block under `recording(store)`
and its recomputation under `replaying(store)`. While recording, every communicating op keeps
its forward result (DistAttn's output and LSE, halos, gathered states) in the block's store;
while replaying, the ops take them from there, so recomputation reruns only local work
(projections, MLP, local scans) and DistAttn runs exactly once forward and once backward.

Instrumentation: `records` holds one CallRecord per communicating call since `reset_stats()`
(in forward order: the attention record of layer i is the i-th attention entry), with bytes
sent forward/backward and blocks/rounds computed; `distattn_forward_calls` counts real
DistAttn forward computations.
"""
from __future__ import annotations

import math
from collections import deque
from contextlib import contextmanager

import torch

from kernels.attention import attention as local_attention
from parallel.sequence.chunks import ChunkLayout
from parallel.sequence.distattn import CallRecord, dist_attention
from parallel.sequence.halo import HaloFunction
from parallel.sequence.heads import (
    AllToAll,
    HeadLayout,
    head_group_size,
    kv_expansion,
    mode_problem,
    resolve_mode,
)
from parallel.sequence.p2p import SPGroup
from parallel.sequence.recurrent import sp_linear_scan, sp_ssd

MAX_RECORDS = 4096


class SequenceParallelHooks:
    """`mode` / `head_group`: parallel.sp_mode and parallel.sp_head_group (heads.py): how global
    attention is laid out over heads and sequence. Windows, convolutions and recurrences take the
    sequence path in every mode (a halo or exact state passing moves far fewer bytes). "auto" is
    resolved per attention call from its head count (heads.resolve_mode)."""

    def __init__(self, group=None, mode: str = "distattn", head_group: int = 1):
        self.g = SPGroup(group)
        self.world, self.rank = self.g.world, self.g.rank
        problem = mode_problem(mode, self.world, head_group, None)
        if problem is not None:
            raise ValueError(problem)
        self.mode, self.head_group = mode, head_group
        self._layouts: dict[int, HeadLayout] = {}
        self._ring: tuple[ChunkLayout, HeadLayout, ChunkLayout] | None = None
        self.records: deque[CallRecord] = deque(maxlen=MAX_RECORDS)   # bounded: training never resets
        self.distattn_forward_calls = 0
        self._doc_src = None
        self._doc_key = None
        self._chunks: ChunkLayout | None = None
        self._remat: tuple[str, list] | None = None

    # ------------------------------------------------------------------ bookkeeping
    def reset_stats(self) -> None:
        self.records = deque(maxlen=MAX_RECORDS)
        self.distattn_forward_calls = 0

    def chunks(self, doc_ids: torch.Tensor | None, n: int) -> ChunkLayout:
        """The chunk layout for this forward; doc ids are all-gathered once and reused by every layer."""
        key = None if doc_ids is None else (doc_ids._version, tuple(doc_ids.shape))
        if self._chunks is not None and self._doc_src is doc_ids and self._doc_key == key and self._chunks.n == n:
            return self._chunks
        self.g.warmup()
        docs = None if doc_ids is None else self.g.all_gather(doc_ids.to(torch.int64))
        self._chunks = ChunkLayout(self.world, self.rank, n, docs)
        self._doc_src, self._doc_key = doc_ids, key       # the reference keeps id() unique while cached
        return self._chunks

    @contextmanager
    def recording(self, store: list):
        prev, self._remat = self._remat, ("record", store)
        try:
            yield
        finally:
            self._remat = prev

    @contextmanager
    def replaying(self, store: list):
        prev, self._remat = self._remat, ("replay", store)
        try:
            yield
        finally:
            self._remat = prev

    def _take(self, kind: str):
        """(cached result, record) when replaying, else (None, new record)."""
        if self._remat is not None and self._remat[0] == "replay" and self._remat[1]:
            got_kind, cached, record = self._remat[1].pop(0)
            if got_kind != kind:
                raise RuntimeError(f"rematerialization replayed {kind} where {got_kind} was recorded")
            return cached, record
        record = CallRecord(kind=kind)
        self.records.append(record)
        return None, record

    def _keep(self, kind: str, cached, result, record) -> None:
        if cached is None and self._remat is not None and self._remat[0] == "record":
            self._remat[1].append((kind, result, record))

    def layout_for(self, mode: str) -> HeadLayout:
        """The head layout of a concrete mode ("auto" not yet resolved: distattn's)."""
        G = head_group_size("distattn" if mode == "auto" else mode, self.world, self.head_group)
        if G not in self._layouts:
            self._layouts[G] = HeadLayout(self.g, G)
        return self._layouts[G]

    # ------------------------------------------------------------------ hooks
    def global_max(self, value: torch.Tensor) -> torch.Tensor:
        """The largest of a scalar over the sequence-parallel ranks (dynamic NTK's length)."""
        top = value.detach().clone().reshape(1)
        torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX, group=self.g.group)
        return top[0]

    def attention(self, q, k, v, *, causal: bool = True, window: int | None = None, doc_ids=None,
                  scale: float | None = None):
        if not causal:
            raise NotImplementedError("sequence-parallel attention is causal only; set causal=True")
        chunks = self.chunks(doc_ids, q.shape[1])
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        if window is not None:
            return self._window_attention(q, k, v, window, doc_ids, chunks, scale)
        cached, record = self._take("attention")
        if cached is None:
            self.distattn_forward_calls += 1
        mode = resolve_mode(self.mode, self.world, q.shape[2])
        lay = self.layout_for(mode)
        if lay.G > 1:
            return self._head_attention(q, k, v, chunks, scale, cached, record, mode, lay)
        o = dist_attention(q, k, v, group=self.g, chunks=chunks, window=None, scale=scale,
                           record=record, cached=cached, keep=lambda res: self._keep("attention", cached, res, record))
        return o

    def _ring_chunks(self, chunks: ChunkLayout, lay: HeadLayout) -> ChunkLayout:
        if self._ring is None or self._ring[0] is not chunks or self._ring[1] is not lay:
            self._ring = (chunks, lay, lay.ring_chunks(chunks))
        return self._ring[2]

    def _head_attention(self, q, k, v, chunks, scale, cached, record, mode, lay):
        """ulysses / 2d: heads -> sequence inside the head group, DistAttn across groups (a single
        local block when the group is all ranks), back to heads. A checkpoint's store keeps every
        exchanged tensor, so the recomputation communicates nothing."""
        problem = mode_problem(mode, self.world, lay.G, q.shape[2])
        if problem is not None:
            raise ValueError(problem)
        e = kv_expansion(q.shape[2], k.shape[2], lay.G)
        if e > 1:
            k, v = k.repeat_interleave(e, dim=2), v.repeat_interleave(e, dim=2)
        c = cached or {}
        b, n, G, d = q.shape[0], q.shape[1], lay.G, q.shape[3]
        hq, hkv = q.shape[2] // G, k.shape[2] // G
        # one exchange for q, k and v: member i's share [q heads i, k heads i, v heads i] is laid out
        # contiguously as qkv[i] by the one copy that gathers them (no further send copy)
        qkv = torch.cat([x.reshape(b, n, G, -1, d).permute(2, 0, 1, 3, 4) for x in (q, k, v)], dim=3)
        qkvh = AllToAll.apply(qkv, lay.heads, True, c.get("qkv"), record)
        qh, kh, vh = qkvh.split([hq, hkv, hkv], dim=2)
        inner = {}
        oh = dist_attention(qh, kh, vh, group=lay.ring, chunks=self._ring_chunks(chunks, lay), window=None,
                            scale=scale, record=record, cached=c.get("dist"), keep=lambda res: inner.update(dist=res))
        o = AllToAll.apply(oh, lay.heads, False, c.get("o"), record)
        self._keep("attention", cached, dict(qkv=qkvh.detach(), dist=inner["dist"], o=o.detach()), record)
        return o

    def _window_attention(self, q, k, v, window, doc_ids, chunks, scale):
        """Sliding window: only the last window−1 keys before the chunk matter -> one halo."""
        cached, record = self._take("window")
        kv = torch.cat([k, v], dim=-1)
        halo = HaloFunction.apply(kv, self.g, window - 1, cached, record)
        self._keep("window", cached, halo.detach(), record)
        length = halo.shape[1]
        kk = torch.cat([halo[..., : k.shape[-1]], k], dim=1)
        vv = torch.cat([halo[..., k.shape[-1]:], v], dim=1)
        k_docs = None if doc_ids is None else torch.cat([chunks.halo_docs(window - 1).to(doc_ids.dtype), doc_ids], 1)
        start = chunks.offset(self.rank)
        return local_attention(q, kk, vv, causal=True, window=window, q_doc_ids=doc_ids, k_doc_ids=k_docs,
                               q_offset=start, k_offset=start - length, scale=scale)

    def causal_conv1d(self, conv_fn, x, weight, bias=None, *, doc_ids=None, activation=None):
        chunks = self.chunks(doc_ids, x.shape[1])
        width = weight.shape[1] - 1
        if width == 0 or self.world == 1:
            return conv_fn(x, weight, bias, doc_ids=doc_ids, activation=activation)
        cached, record = self._take("conv")
        halo = HaloFunction.apply(x, self.g, width, cached, record)
        self._keep("conv", cached, halo.detach(), record)
        left_docs = None if doc_ids is None else chunks.halo_docs(width).to(doc_ids.dtype)
        if halo.shape[1] < width:
            # rank 0 (and early ranks when width > chunk): zeros before the sequence start. The
            # (possibly empty) halo stays in the graph so every rank joins the backward exchange.
            pad = width - halo.shape[1]
            halo = torch.cat([halo.new_zeros(halo.shape[0], pad, *halo.shape[2:]), halo], dim=1)
            if left_docs is not None:
                left_docs = torch.cat([doc_ids[:, :1].expand(-1, pad), left_docs], dim=1)
        return conv_fn(x, weight, bias, doc_ids=doc_ids, left_context=halo, left_doc_ids=left_docs,
                       activation=activation)

    def ssd(self, ssd_fn, x, dt, A, B, C, *, D=None, doc_ids=None, initial_state=None, chunk_size=64):
        chunks = self.chunks(doc_ids, x.shape[1])
        cached, record = self._take("ssd")
        y, final, gathered = sp_ssd(self.g, chunks, ssd_fn, x, dt, A, B, C, D=D, doc_ids=doc_ids,
                                    initial_state=initial_state, chunk_size=chunk_size,
                                    cached=cached, record=record)
        self._keep("ssd", cached, gathered.detach(), record)
        return y, final

    def linear_scan(self, scan_fn, a, x, *, doc_ids=None, initial_state=None):
        chunks = self.chunks(doc_ids, x.shape[1])
        cached, record = self._take("scan")
        h, final, gathered = sp_linear_scan(self.g, chunks, scan_fn, a, x, doc_ids=doc_ids,
                                            initial_state=initial_state, cached=cached, record=record)
        self._keep("scan", cached, gathered.detach(), record)
        return h, final
