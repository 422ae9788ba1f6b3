"""Multi-query needle: several key/number needles, two of them asked for at once
(score = fraction of the asked numbers in the continuation)."""
from __future__ import annotations

from data.tasks.base import Sample, haystack, needle_depths, number
from data.tasks.niah_multikey import HEAD, distinct_keys, magic
from data.tasks.registry import Task, register


@register
class NiahMultiquery(Task):
    name = "niah_multiquery"
    needles = 3
    queries = 2
    max_new_tokens = 16

    def build(self, rng, tok, length, depth):
        keys = distinct_keys(rng, self.needles)
        values = [number(rng) for _ in keys]
        depths = needle_depths(rng, depth, len(keys))
        asked = [0] + rng.sample(range(1, self.needles), self.queries - 1)
        names = ", ".join(keys[i] for i in asked)
        question = f"What are the codes of {names}? The codes of {names} are"
        ctx, q, fixed = haystack(tok, rng, length, HEAD, [(d, magic(k, v)) for d, k, v in zip(depths, keys, values)],
                                 question, self.name)
        answers = [values[i] for i in asked]
        return Sample(self.name, ctx, q, answers, " " + ", ".join(answers) + ".", fixed, depth)
