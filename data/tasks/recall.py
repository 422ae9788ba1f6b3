"""Recall (a training-only warm-up): key-value pairs, then the same pairs again in another order.

"Pairs: dok 48213, pel 99120, ... Recall: pel 99120, dok 48213, ..." — every value in the second
list is predictable only by finding its key in the first list and copying the number after it
(multi-query associative recall). That is the passkey skill ("The pass key is" → the digits that
followed it earlier) on every pair instead of once per document, with keys of a few letters, so
the match must use several tokens of prefix, not one. A training document kind only: it has no
single question to score (data.tasks may name it; train.evaluate --tasks may not).
"""
from __future__ import annotations

import random
import string

from data.tasks.base import distinct, doc_start, number, text_ids
from data.tasks.registry import Warmup, register_warmup

HEAD, AGAIN = "Pairs:", " Recall:"


def key(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 4)))


@register_warmup
class Recall(Warmup):
    name = "recall"

    def document(self, tok, length: int, seed: int, depth: float | None = None) -> list[int]:
        """At most `length` tokens (never fewer than two pairs)."""
        rng = random.Random(seed)
        start, head, again = doc_start(tok), text_ids(tok, HEAD), text_ids(tok, AGAIN)
        pair_len = len(text_ids(tok, " abcd 12345,"))
        n = max(2, (length - len(start) - len(head) - len(again) - 1) // (2 * pair_len))
        keys = distinct(rng, n, key)
        values = [number(rng) for _ in keys]
        order = rng.sample(range(n), n)
        first = ",".join(f" {k} {v}" for k, v in zip(keys, values))
        second = ",".join(f" {keys[i]} {values[i]}" for i in order)
        return start + head + text_ids(tok, first + ".") + again + text_ids(tok, second + ".") + [int(tok.eos)]
