"""Variable tracking: "VAR X = 12345." then a chain of copies "VAR Y = VAR X." spread through the
text; the answer names every variable holding the value (score = fraction named)."""
from __future__ import annotations

import string

from data.tasks.base import Sample, distinct, haystack, needle_depths, number
from data.tasks.registry import Task, register

HEAD = "Track the variables."


def names(rng, n: int) -> list[str]:
    return distinct(rng, n, lambda r: "".join(r.choice(string.ascii_uppercase) for _ in range(3)))


@register
class VariableTracking(Task):
    name = "vt"
    hops = 2
    max_new_tokens = 24

    def build(self, rng, tok, length, depth):
        value = number(rng)
        chain = names(rng, self.hops + 1)
        depths = needle_depths(rng, depth, len(chain), later=True)   # each copy after the one it copies
        stmts = [f"VAR {chain[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(chain, chain[1:])]
        question = f"Which variables hold {value}? They are"
        ctx, q, fixed = haystack(tok, rng, length, HEAD, list(zip(depths, stmts)), question, self.name)
        return Sample(self.name, ctx, q, chain, " " + " ".join(chain) + ".", fixed, depth)

    def score(self, generated, sample):
        said = set(generated.replace(".", " ").replace(",", " ").split())
        return sum(a in said for a in sample.answers) / len(sample.answers)
