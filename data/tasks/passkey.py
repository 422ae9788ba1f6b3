"""Single needle (passkey): a 5-digit key hidden at a depth, asked for at the end.

The classic prompt (instruction, filler, "The pass key is K. Remember it. K is the pass key.",
filler, "What is the pass key? The pass key is"), the same shape as data/synthetic.py's
passkey documents. Scored by exact match of the first number.
"""
from __future__ import annotations

from data.synthetic import INSTRUCTION, PASSKEY_QUESTION, passkey_needle
from data.tasks.base import Sample, haystack, number
from data.tasks.registry import Task, first_number_is, register


@register
class Passkey(Task):
    name = "passkey"

    def build(self, rng, tok, length, depth):
        key = number(rng)
        ctx, q, fixed = haystack(tok, rng, length, INSTRUCTION, [(depth, passkey_needle(key))],
                                 PASSKEY_QUESTION, self.name)
        return Sample(self.name, ctx, q, [key], f" {key}.", fixed, depth)

    def score(self, generated, sample):
        return first_number_is(generated, sample.answers[0])
