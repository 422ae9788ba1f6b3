"""Single needle (passkey): a 5-digit key hidden at a depth, asked for at the end.

The classic prompt shape (instruction, filler, "The pass key is K. Remember it.", filler,
"What is the pass key? The pass key is"), with a shorter instruction and needle than
data/synthetic.py's classic passkey documents so that at T = 256 byte tokens over half of the
prompt is filler and the needle's depth means something. Scored by exact match of the first number.
"""
from __future__ import annotations

from data.synthetic import PASSKEY_QUESTION
from data.tasks.base import Sample, haystack, number
from data.tasks.registry import Task, first_number_is, register

HEAD = "There is an important piece of information hidden in this text."


@register
class Passkey(Task):
    name = "passkey"

    def build(self, rng, tok, length, depth):
        key = number(rng)
        ctx, q, fixed = haystack(tok, rng, length, HEAD, [(depth, f"The pass key is {key}. Remember it.")],
                                 PASSKEY_QUESTION, self.name)
        return Sample(self.name, ctx, q, [key], f" {key}.", fixed, depth)

    def score(self, generated, sample):
        return first_number_is(generated, sample.answers[0])
