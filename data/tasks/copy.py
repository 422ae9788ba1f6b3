"""Copy (an induction warm-up): a random lowercase string, filler, then "Copy: " and the string.

Copying a span seen earlier is the mechanism every retrieval task needs; this task has nothing
else in it, so a small model meets the copying signal densely and early."""
from __future__ import annotations

import string

from data.tasks.base import Sample, haystack
from data.tasks.registry import Task, register


@register
class Copy(Task):
    name = "copy"
    max_new_tokens = 16

    def build(self, rng, tok, length, depth):
        s = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(5, 10)))
        ctx, q, fixed = haystack(tok, rng, length, "Copy this:", [(depth, f"{s}.")], "Copy:", self.name)
        return Sample(self.name, ctx, q, [s], f" {s}.", fixed, depth)

    def score(self, generated, sample):
        return float(generated.strip().split(".")[0] == sample.answers[0])
