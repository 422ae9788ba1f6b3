"""Token induction (a training-only warm-up): strings of random token ids from the byte range, each repeated at once.

Why this shape (measured with benchmarks/induction_probe.py: a 2-layer model with a sliding window
of 8 tokens first, batch 8, T = 256): strings of random bytes repeated at once are copied at 0.96
after 200 steps, while strings over 36 letters and digits or the 94 printable characters stay at
chance for 250 steps, and so do random bytes when the first copy is scored too (its tokens are
unpredictable; their gradient drowns the copying signal). So the first copies are not scored
(`document_scored`), and during a warm-up (data.warmup_tasks) rows are closed by warm-up pieces,
not filler prose: with prose there, the same rows left the model at chance for 300 steps; without
it, copying reached 0.95 by step 300. Every id 0..255 is a token of the byte, tiktoken and
GPT-2-style vocabularies; the document means nothing as text. Training-only: nothing to score
(data.tasks and data.warmup_tasks may name it; train.evaluate --tasks may not).
"""
from __future__ import annotations

import random

from data.tasks.base import doc_start, text_ids
from data.tasks.registry import ScoredWarmup, register_warmup

ID_RANGE = 256
MIN_LEN, MAX_LEN = 8, 64
HEAD = "Random ids: "


def repeated_strings(tok, length: int, seed: int, head: str,
                     symbols: list[int]) -> tuple[list[int], list[bool]]:
    """`length` tokens (at least one pair): doc start and `head`, then pairs "s s" of random strings s of
    MIN_LEN..MAX_LEN ids drawn from `symbols`, back to back, then random ids to the exact length, then
    the end token; and which tokens are scored as targets: not the first copies, a copy's first id, nor
    the trailing random ids (nothing predicts them; their gradient is noise that keeps copying from
    forming). token_induction draws from every byte id, digit_induction from the ten digits."""
    rng = random.Random(seed)
    out = doc_start(tok) + text_ids(tok, head)
    scored = [True] * len(out)
    room = max(2 * MIN_LEN, length - len(out) - 1)                          # 1: the end token
    while room >= 2 * MIN_LEN:
        s = [rng.choice(symbols) for _ in range(rng.randint(MIN_LEN, min(MAX_LEN, room // 2)))]
        out += s + s
        scored += [False] * len(s) + [False] + [True] * (len(s) - 1)    # a copy's first id: no cue yet
        room -= 2 * len(s)
    out += [rng.choice(symbols) for _ in range(room)] + [int(tok.eos)]
    return out, scored + [False] * room + [True]


@register_warmup
class TokenInduction(ScoredWarmup):
    name = "token_induction"

    def document_scored(self, tok, length: int, seed: int) -> tuple[list[int], list[bool]]:
        """Pairs of random byte-id strings (repeated_strings)."""
        return repeated_strings(tok, length, seed, HEAD, list(range(ID_RANGE)))
