"""LightSeq's balanced causal schedule for DistAttn, as a pure function of (P, round, rank).

Rank r owns query chunk q_r and key/value chunk kv_r. Causal attention needs every block
(q_a, kv_b) with b <= a: the diagonal (local) plus P(P-1)/2 off-diagonal blocks. A plain ring
gives rank r the r blocks (q_r, kv_{r-1..0}), so the last rank works P rounds while rank 0
idles. Here every unordered pair {a > b} is served in round d = circular distance:
- if the distance a - b <= P // 2 the query owner a computes it (receives kv_b from rank a-d);
- otherwise (the pair "wraps", distance P - d) the key owner b is idle in the plain ring, so
  it computes (q_a, kv_b) as a helper: it receives q_a from rank b-d+P and sends the partial
  (o, lse) back, where it is merged by log-sum-exp.
With d = 1..P//2 every rank does one block per round, so the schedule takes P//2 + 1 rounds
(<= ceil(P/2) + 1) for any P. For even P the last round has only P/2 pairs (distance exactly
P/2) for P ranks, so each of those blocks is split by query rows: the query owner computes the
first half of its rows, the key owner (otherwise idle) the second half as a helper. Every rank
then does the same work (P/2 blocks, a diagonal counting half) for every P. The same table
drives the backward pass.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoundPlan:
    """What one rank does in one off-diagonal round d (peers are sp ranks)."""
    own_from: int | None    # compute (q_me, kv_own_from): receive kv from this rank
    help_for: int | None    # compute (q_help_for, kv_me): receive q from this rank, return (o, lse)
    send_kv_to: int | None  # send kv_me to this rank (a query owner that needs it)
    send_q_to: int | None   # send q_me to this rank (my helper this round)
    split: bool = False     # the block is shared: owner does the first half of the query rows, helper the rest


def n_offdiag_rounds(world: int) -> int:
    return world // 2


def n_rounds(world: int) -> int:
    """Compute rounds including the diagonal one."""
    return n_offdiag_rounds(world) + 1


def round_plan(world: int, d: int, rank: int) -> RoundPlan:
    """The balanced plan for `rank` in off-diagonal round d (1 <= d <= world // 2)."""
    if not 1 <= d <= n_offdiag_rounds(world):
        raise ValueError(f"round {d} is outside 1..{n_offdiag_rounds(world)} for {world} ranks")
    split = world % 2 == 0 and d == world // 2    # pairs at distance P/2: owner and helper share each
    own_from = rank - d if rank >= d else None
    help_for = rank - d + world if rank < d else None
    to = rank + d
    send_kv_to = to if to < world else None
    send_q_to = to - world if to >= world else None
    return RoundPlan(own_from, help_for, send_kv_to, send_q_to, split)


def block_of(plan: RoundPlan, rank: int) -> tuple[int, int] | None:
    """The (query chunk, key chunk) this rank computes (all or, when plan.split, half of its
    query rows) under `plan`, or None when idle."""
    if plan.own_from is not None:
        return rank, plan.own_from
    if plan.help_for is not None:
        return plan.help_for, rank
    return None


def ring_rounds(rank: int) -> int:
    """Compute rounds of rank `rank` in the plain (unbalanced) causal ring: its r+1 blocks."""
    return rank + 1


def rank_work(world: int) -> list[float]:
    """Causal attention work per rank under the balanced schedule, in off-diagonal blocks (a
    diagonal block is half of one): the figures behind "busiest rank / mean"."""
    work = [0.5] * world
    for d in range(1, n_offdiag_rounds(world) + 1):
        for r in range(world):
            plan = round_plan(world, d, r)
            work[r] += (0.5 if plan.split else 1.0) * (block_of(plan, r) is not None)
    return work
