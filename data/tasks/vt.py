"""Variable tracking: "VAR X = 12345." then a chain of copies "VAR Y = VAR X." spread through the
text; the answer names every variable holding the value (score = fraction named)."""
from __future__ import annotations

import string

from data.tasks.base import Sample, haystack, number
from data.tasks.registry import Task, register

HEAD = "Track the variables."


def names(rng, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        v = "".join(rng.choice(string.ascii_uppercase) for _ in range(3))
        if v not in out:
            out.append(v)
    return out


@register
class VariableTracking(Task):
    name = "vt"
    hops = 2
    max_new_tokens = 24

    def build(self, rng, tok, length, depth):
        value = number(rng)
        chain = names(rng, self.hops + 1)
        # the first assignment at `depth`, each copy later than the previous one
        depths = sorted([depth] + [depth + (1 - depth) * rng.random() for _ in chain[1:]])
        stmts = [f"VAR {chain[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(chain, chain[1:])]
        question = f"Which variables hold {value}? They are"
        ctx, q, fixed = haystack(tok, rng, length, HEAD, list(zip(depths, stmts)), question, self.name)
        return Sample(self.name, ctx, q, chain, " " + " ".join(chain) + ".", fixed, depth)

    def score(self, generated, sample):
        said = set(generated.replace(".", " ").replace(",", " ").split())
        return sum(a in said for a in sample.answers) / len(sample.answers)
