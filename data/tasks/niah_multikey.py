"""Multi-key needle: several "The code of KEY is N." needles, one asked for (the others are
distractors with different keys). Exact match of the first number. Short phrasing, so that a
prompt with its distractors still leaves room for filler at T = 256 byte tokens."""
from __future__ import annotations

from data.synthetic import NOUN
from data.tasks.base import Sample, distinct, haystack, needle_depths, number
from data.tasks.registry import Task, first_number_is, register

HEAD = "Remember the codes."


def magic(key: str, value: str) -> str:
    return f"The code of {key} is {value}."


def distinct_keys(rng, n: int) -> list[str]:
    return distinct(rng, n, lambda r: r.choice(NOUN))


@register
class NiahMultikey(Task):
    name = "niah_multikey"
    distractors = 2

    def build(self, rng, tok, length, depth):
        keys = distinct_keys(rng, self.distractors + 1)
        values = [number(rng) for _ in keys]
        needles = list(zip(needle_depths(rng, depth, len(keys)), map(magic, keys, values)))
        question = f"What is the code of {keys[0]}? The code of {keys[0]} is"
        ctx, q, fixed = haystack(tok, rng, length, HEAD, needles, question, self.name)
        return Sample(self.name, ctx, q, [values[0]], f" {values[0]}.", fixed, depth, {"key": keys[0]})

    def score(self, generated, sample):
        return first_number_is(generated, sample.answers[0])
