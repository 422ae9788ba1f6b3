"""Word induction (a training-only warm-up): runs of random filler words, each run repeated at once.

In a passkey prompt the first digit of the answer follows the " " after "The pass key is", and " "
precedes every word of the prose: the one previous token (all token_induction teaches to match) says
nothing, the previous word or two ("key is ") find the needle. Here every word of a repeated run
starts after a " " too, so a copy's next word is found only by matching the word(s) before it:
the several-token match of the passkey, on the prose's own words (data/synthetic.py's vocabulary),
in random order so that the prose grammar cannot predict it. The first runs are not scored (their
word choices are random), nor a copy's first two tokens (" " and the first letter: nothing says
where a copy starts). Training-only: nothing to score (data.tasks and
data.warmup_tasks may name it; train.evaluate --tasks may not).
"""
from __future__ import annotations

import random

from data.synthetic import ADJ, NOUN, PREP, VERB
from data.tasks.base import doc_start, text_ids
from data.tasks.registry import ScoredWarmup, register_warmup

WORDS = ADJ + NOUN + VERB + PREP
MIN_WORDS, MAX_WORDS = 3, 10
HEAD = "Random words:"


def run(tok, rng: random.Random, room: int) -> list[int] | None:
    """The ids of " w1 w2 ... wn" for random words, at most `room` tokens (None: not even MIN_WORDS fit)."""
    words = [rng.choice(WORDS) for _ in range(rng.randint(MIN_WORDS, MAX_WORDS))]
    while words:
        ids = text_ids(tok, "".join(" " + w for w in words))
        if len(ids) <= room:
            return ids if len(words) >= MIN_WORDS else None
        words.pop()
    return None


@register_warmup
class WordInduction(ScoredWarmup):
    name = "word_induction"

    def document_scored(self, tok, length: int, seed: int) -> tuple[list[int], list[bool]]:
        """`length` tokens (at least one pair): the head, then pairs "r r" of runs r of MIN_WORDS..MAX_WORDS
        random words, back to back, then the start of one more run to the exact length, then the end
        token; and which tokens are scored: not the first runs, a copy's first two tokens, nor the tail."""
        rng = random.Random(seed)
        out = doc_start(tok) + text_ids(tok, HEAD)
        scored = [True] * len(out)
        longest = len(text_ids(tok, " " + " ".join(max(WORDS, key=len) for _ in range(MIN_WORDS))))
        room = max(2 * longest, length - len(out) - 1)                          # 1: the end token
        while (r := run(tok, rng, room // 2)) is not None:
            out += r + r
            scored += [False] * len(r) + [False, False] + [True] * (len(r) - 2)
            room -= 2 * len(r)
        tail = text_ids(tok, "".join(" " + rng.choice(WORDS) for _ in range(room)))[:room]
        return out + tail + [int(tok.eos)], scored + [False] * len(tail) + [True]
