"""Key copy (a training-only warm-up): a number written after a cue, a short stretch of prose, then asked back.

" key 48213. <0..MAX_GAP tokens of filler> key? 48213."
again and again until the document is full, each unit with a new number. It is the passkey skill —
write the digits that follow a cue into the state, keep them through filler, emit them when the
cue comes back — on one number at a time (no associative recall over many pairs, which a small
fixed state finds hardest) and several times per row instead of once per few hundred tokens, with
gaps short enough for a recurrent model to bridge from its first steps. Only the asked-back
digits and their full stop are scored: with every other token in the loss too (cues, filler
prose; the written digits never, nothing predicts them) a 2-layer Mamba-2 (d_model 64) copied the
asked-back digits at chance (0.100) after 1250 steps, against 0.998 with the answers alone
(benchmarks/induction_probe.py --passkey, one run each): the prose's gradient drowns the copying
signal, as with token_induction's first copies. The cue and question are this kind's own
wording, not the passkey prompt's. Training-only: nothing to score (data.tasks and
data.warmup_tasks may name it; train.evaluate --tasks may not).
"""
from __future__ import annotations

import random

from data.tasks.base import doc_start, filler_ids, number, text_ids
from data.tasks.registry import ScoredWarmup, register_warmup

MAX_GAP = 48                # filler tokens between a number and its question: 0..MAX_GAP


def parts(tok, key: str) -> tuple[list[int], ...]:
    return (text_ids(tok, " key "), text_ids(tok, key), text_ids(tok, "."),
            text_ids(tok, " key? "), text_ids(tok, "."))


def unit_fixed(tok) -> int:
    """A unit's size without filler."""
    write, digits, ask, question, dot = parts(tok, "12345")
    return len(write) + 2 * len(digits) + len(ask) + len(question) + len(dot)


def unit(tok, rng: random.Random, room: int) -> tuple[list[int], list[bool]] | None:
    """One write + filler + ask-back unit of at most `room` tokens and its scored mask (None: no room)."""
    fixed = unit_fixed(tok)
    if room < fixed:
        return None
    write, digits, ask, question, dot = parts(tok, number(rng))
    gap, _ = filler_ids(tok, rng, rng.randint(0, min(MAX_GAP, room - fixed)))
    ids = write + digits + ask + gap + question + digits + dot
    answer = len(digits) + len(dot)
    return ids, [False] * (len(ids) - answer) + [True] * answer


@register_warmup
class KeyCopy(ScoredWarmup):
    name = "key_copy"

    def document_scored(self, tok, length: int, seed: int) -> tuple[list[int], list[bool]]:
        """`length` tokens (at least one unit): document start, units back to back, filler to the exact
        length, the end token; and which tokens are scored (each asked-back number and its full stop)."""
        rng = random.Random(seed)
        out = doc_start(tok)
        scored = [False] * len(out)
        start = len(out)
        while True:
            room = length - len(out) - 1                                    # 1: the end token
            if len(out) == start:
                room = max(room, unit_fixed(tok))                           # the first unit always fits
            u = unit(tok, rng, room)
            if u is None:
                break
            out += u[0]
            scored += u[1]
        rest, _ = filler_ids(tok, rng, max(0, length - len(out) - 1))
        return out + rest + [int(tok.eos)], scored + [False] * (len(rest) + 1)
