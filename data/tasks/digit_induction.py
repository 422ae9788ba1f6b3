"""Digit induction (a training-only warm-up): strings of random digits, each repeated at once.

token_induction's strings are random bytes (256 symbols): the one previous token already says where
the copy goes on, so matching one token is all it teaches. A passkey answer is not found that way:
its first digit follows " " after "The pass key is", and " " or "is " occur all over the prose; only
a match on several tokens ("key is ") finds the needle, and the key's later digits follow digits.
Here the strings are over the ten digits, so a digit occurs ~len/10 times in the first copy and
only the last few tokens together (about log10(len) + 1 of them) say where the copy goes on.
As in token_induction the first copies are not scored (nothing predicts them), nor a copy's first
digit. Each digit must be one token of the tokenizer (true of the byte, tiktoken and GPT-2-style
ones). Training-only: nothing to score (data.tasks and data.warmup_tasks may name it;
train.evaluate --tasks may not).
"""
from __future__ import annotations

from data.tasks.base import TaskError, text_ids
from data.tasks.registry import ScoredWarmup, register_warmup
from data.tasks.token_induction import repeated_strings

HEAD = "Random digits: "


def digit_ids(tok) -> list[int]:
    """The token id of each digit 0..9 (each must be a single token)."""
    ids = [text_ids(tok, str(d)) for d in range(10)]
    if any(len(i) != 1 for i in ids):
        raise TaskError(f"digit_induction needs every digit to be one token, but tokenizer "
                        f"{getattr(tok, 'name', tok)!r} splits some; use the byte tokenizer or drop digit_induction")
    return [i[0] for i in ids]


@register_warmup
class DigitInduction(ScoredWarmup):
    name = "digit_induction"

    def document_scored(self, tok, length: int, seed: int) -> tuple[list[int], list[bool]]:
        """Pairs of random digit strings (token_induction.repeated_strings over the ten digits' ids)."""
        return repeated_strings(tok, length, seed, HEAD, digit_ids(tok))
