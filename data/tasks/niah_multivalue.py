"""Multi-value needle: one key with several values scattered through the text; the answer
lists all of them (score = fraction of the values in the continuation)."""
from __future__ import annotations

from data.synthetic import NOUN
from data.tasks.base import Sample, distinct, haystack, needle_depths, number
from data.tasks.niah_multikey import HEAD, magic
from data.tasks.registry import Task, register


@register
class NiahMultivalue(Task):
    name = "niah_multivalue"
    values = 3
    max_new_tokens = 24

    def build(self, rng, tok, length, depth):
        key = rng.choice(NOUN)
        values = distinct(rng, self.values, number)
        depths = needle_depths(rng, depth, len(values))
        needles = list(zip(depths, (magic(key, v) for v in values)))
        order = [v for _, v in sorted(zip(depths, values), key=lambda x: x[0])]   # as they appear
        question = f"What are all codes of {key}? The codes of {key} are"
        ctx, q, fixed = haystack(tok, rng, length, HEAD, needles, question, self.name)
        return Sample(self.name, ctx, q, order, " " + ", ".join(order) + ".", fixed, depth, {"key": key})
