"""Induction (a training-only warm-up): a random string of letters and digits, then the same string again.

Half of every document is predictable only by copying the first half, token by token, so a
small model meets the copying signal on every other token (where a passkey document gives five
answer tokens in a few hundred): the prefix-matching + copying circuit ("induction head") that
every retrieval task needs forms in the first few hundred steps instead of after a long
plateau. The string is as long as the document allows, so the copy distance spans the row.
It has no question and no answer to score, so it is a training document kind only (data.tasks
may name it; train.evaluate --tasks may not).
"""
from __future__ import annotations

import random
import string

from data.tasks.base import doc_start, text_ids
from data.tasks.registry import Warmup, register_warmup

ALPHABET = string.ascii_lowercase + string.digits
HEAD, AGAIN = "Random: ", " Again: "


@register_warmup
class Induction(Warmup):
    name = "induction"

    def document(self, tok, length: int, seed: int, depth: float | None = None) -> list[int]:
        """`length` tokens (a few less when the halves do not divide evenly; never fewer than 8 characters)."""
        rng = random.Random(seed)
        start, head, again = doc_start(tok), text_ids(tok, HEAD), text_ids(tok, AGAIN)
        room = (length - len(start) - len(head) - len(again) - 2) // 2        # 2: the full stop and the end token
        chars: list[int] = []
        while len(chars) < max(8, room):
            chars += text_ids(tok, rng.choice(ALPHABET))
        chars = chars[:max(8, room)]
        return start + head + chars + again + chars + text_ids(tok, ".") + [int(tok.eos)]
