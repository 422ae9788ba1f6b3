"""Head×sequence layouts for sequence-parallel attention: `parallel.sp_mode`.

- auto:     (the default) ulysses where sp divides the heads of a tensor-parallel rank, else
            distattn (resolve_mode: the measured rule).
- distattn: every rank keeps all heads of its T/P tokens; DistAttn over the P ranks.
- ulysses:  an all-to-all over heads gives each rank H/P heads of the whole sequence; plain
            attention runs locally; a second all-to-all returns the output (DeepSpeed-Ulysses'
            layout, our own code).
- 2d:       the P ranks form P/G head groups of G adjacent ranks (parallel.sp_head_group = G).
            An all-to-all inside a group gives each member H/G heads of the group's G·n tokens;
            DistAttn runs across groups among the members holding the same heads (the USP /
            LoongTrain layout); an all-to-all returns the output. G = P is ulysses, G = 1 distattn.

All three are one code path here (HeadLayout with G = 1, P or sp_head_group). Over the whole
sequence-parallel group (ulysses) an all-to-all is one all_to_all_single collective (on gloo CPU
0.96× against 1.02× of DeepSpeed's CPU time for P−1 point-to-point pairs, P=4, T=2048); a head
group of 2d is a subset of it, so there the all-to-alls are point-to-point exchanges on the
sequence-parallel group (SubGroup) and no extra process group is created. The byte counter
sees every message either way. K/V stay un-expanded when the group
divides kv_heads; otherwise they are expanded by the smallest factor that makes it divide.
"""
from __future__ import annotations

import torch

from parallel.sequence.chunks import ChunkLayout
from parallel.sequence.p2p import SPGroup

SP_MODES = ("auto", "distattn", "ulysses", "2d")


def resolve_mode(mode: str, sp: int, heads: int | None) -> str:
    """The layout `mode` stands for at sp ranks with `heads` query heads per tensor-parallel rank.
    "auto" (the default) is ulysses where sp divides the heads and distattn otherwise: on gloo CPU
    ulysses measured ≤ distattn's CPU time at every P = 2, 4 and T = 2K, 8K, with and without packed
    documents (benchmarks/RESULTS.md, issue 21), and equal to DeepSpeed-Ulysses within noise."""
    if mode != "auto":
        return mode
    return "ulysses" if heads is not None and sp > 1 and heads % sp == 0 else "distattn"


def head_group_size(mode: str, world: int, head_group: int) -> int:
    """G: the ranks that exchange heads (1 for distattn, P for ulysses, sp_head_group for 2d)."""
    return {"distattn": 1, "ulysses": world, "2d": head_group}[mode]


def mode_problem(mode: str, sp: int, head_group: int, heads: int | None) -> str | None:
    """Why (one line) `mode` cannot split `heads` query heads per tensor-parallel rank over sp ranks, or None."""
    if mode not in SP_MODES:
        return f"parallel.sp_mode={mode!r} is not one of {', '.join(SP_MODES)}"
    if mode == "auto":
        return None                          # resolve_mode falls back to distattn where ulysses cannot split
    if mode == "2d" and (head_group < 1 or sp % head_group):
        return (f"parallel.sp_head_group={head_group} must divide parallel.sp={sp} for sp_mode='2d'; "
                "pick a divisor of sp")
    g = head_group_size(mode, sp, head_group)
    if heads is not None and g > 1 and heads % g:
        knob = "parallel.sp" if mode == "ulysses" else "parallel.sp_head_group"
        return (f"sp_mode={mode!r} splits attention heads over {g} ranks but a tensor-parallel rank has "
                f"{heads} query heads; make {knob} divide {heads} or use sp_mode='distattn'")
    return None


class SubGroup:
    """A subset of the sequence-parallel ranks, with SPGroup's P2P interface (peers are indices
    into `members`); messages and bytes go through the parent group."""

    def __init__(self, parent: SPGroup, members: list[int]):
        self.parent, self.members = parent, members
        self.world, self.rank = len(members), members.index(parent.rank)
        self.whole = members == list(range(parent.world))      # the whole group: one collective

    @property
    def bytes_sent(self) -> int:
        return self.parent.bytes_sent

    def exchange(self, sends, recvs):
        return self.parent.exchange([(self.members[p], t) for p, t in sends],
                                    [(self.members[p], key, buf) for p, key, buf in recvs])


class HeadLayout:
    """Where this rank sits in the head groups (size G) and the rings across them (size P/G)."""

    def __init__(self, g: SPGroup, group_size: int):
        P, G, r = g.world, group_size, g.rank
        self.G, self.C = G, P // G
        self.heads = SubGroup(g, [(r // G) * G + i for i in range(G)])
        self.ring = SubGroup(g, [r % G + G * c for c in range(self.C)])

    def ring_chunks(self, chunks: ChunkLayout) -> ChunkLayout:
        """The chunk layout of the ring: C chunks of G·n tokens (a head group's tokens)."""
        docs = None
        if chunks.docs is not None:
            docs = [torch.cat(chunks.docs[c * self.G:(c + 1) * self.G], dim=1) for c in range(self.C)]
        return ChunkLayout(self.C, self.ring.rank, chunks.n * self.G, docs)


def kv_expansion(heads: int, kv_heads: int, group: int) -> int:
    """Smallest e dividing heads/kv_heads with group | kv_heads·e (repeat each kv head e times)."""
    rep = heads // kv_heads
    return next(e for e in range(1, rep + 1) if rep % e == 0 and (kv_heads * e) % group == 0)


def all_to_all(x: torch.Tensor, sub: SubGroup, to_sequence: bool) -> torch.Tensor:
    """to_sequence: [B, n, H', D] (my tokens, all heads) -> [B, G·n, H'/G, D] (the group's tokens,
    my heads); otherwise the inverse. Member i gets head slice i / token chunk i. x may also be
    [G, B, n, H'/G, D] (to_sequence only): member i's share already laid out contiguously as x[i],
    so no send copy is made. The output is allocated once; received shares land in it directly
    where their slice is contiguous (token chunks of one row), else are copied in."""
    G, me = sub.world, sub.rank
    if sub.whole:
        return all_to_all_whole(x, sub, to_sequence)
    if x.dim() == 5:
        parts = list(x.unbind(0))
    else:
        parts = list(x.chunk(G, dim=2 if to_sequence else 1))
    cat_dim = 1 if to_sequence else 2
    shape = parts[me].shape
    out_shape = list(shape)
    out_shape[cat_dim] *= G
    out = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    slots = out.chunk(G, dim=cat_dim)
    sends = [(i, parts[i]) for i in range(G) if i != me]
    recvs = [(i, i, slots[i] if slots[i].is_contiguous() else torch.empty(shape, dtype=x.dtype, device=x.device))
             for i in range(G) if i != me]
    got = sub.exchange(sends, recvs).wait()
    slots[me].copy_(parts[me])
    for i, buf in got.items():
        if buf.data_ptr() != slots[i].data_ptr():
            slots[i].copy_(buf)
    return out


def all_to_all_whole(x: torch.Tensor, sub: SubGroup, to_sequence: bool) -> torch.Tensor:
    """all_to_all over the whole sequence-parallel group as one collective (all_to_all_single:
    gloo's alltoall, NCCL's grouped send/recv) instead of G−1 point-to-point pairs. Shares are
    laid out member-major ([G, B, n, h, D], member i's share at [i]) on both sides."""
    G = sub.world
    if to_sequence:
        parts = x if x.dim() == 5 else x.unflatten(2, (G, -1)).permute(2, 0, 1, 3, 4)
    else:
        parts = x.unflatten(1, (G, -1)).permute(1, 0, 2, 3, 4)     # member i gets token chunk i
    parts = parts.contiguous()
    got = torch.empty_like(parts)
    sub.parent.all_to_all(got, parts)
    if to_sequence:                                              # got[i]: member i's tokens, my heads
        return got.permute(1, 0, 2, 3, 4).flatten(1, 2)
    return got.permute(1, 2, 0, 3, 4).flatten(2, 3)              # got[i]: my tokens, member i's heads


class AllToAll(torch.autograd.Function):
    """all_to_all with its inverse as backward. `cached` (rematerialization) replaces the
    forward's exchange by its earlier result; `record` counts the bytes."""

    @staticmethod
    def forward(ctx, x, sub: SubGroup, to_sequence: bool, cached, record):
        ctx.sub, ctx.to_sequence, ctx.record = sub, to_sequence, record
        ctx.member_major = x.dim() == 5       # [G, B, n, H'/G, D]: member i's share is x[i]
        if cached is not None:
            return cached.clone()
        before = sub.bytes_sent
        y = all_to_all(x, sub, to_sequence)
        record.fwd_bytes += sub.bytes_sent - before
        return y

    @staticmethod
    def backward(ctx, dy):
        before = ctx.sub.bytes_sent
        dx = all_to_all(dy, ctx.sub, not ctx.to_sequence)
        ctx.record.bwd_bytes += ctx.sub.bytes_sent - before
        if ctx.member_major:                  # back to [G, B, n, H'/G, D]
            b, n, _, d = dx.shape
            dx = dx.reshape(b, n, ctx.sub.world, -1, d).permute(2, 0, 1, 3, 4)
        return dx, None, None, None, None
