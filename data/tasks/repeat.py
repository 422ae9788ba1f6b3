"""Repeat (an induction warm-up): a random string of letters and digits, then the same string again.

Every token of the repetition is predictable only by looking back at the first copy, so a small
model gets a dense copying signal in every document (tens of tokens, where a passkey gives five);
this is the prefix-matching + copying circuit ("induction head") retrieval needs. The haystack
is filler between the two copies, so the distance grows with the document length."""
from __future__ import annotations

import string

from data.tasks.base import Sample, haystack
from data.tasks.registry import Task, register

ALPHABET = string.ascii_lowercase + string.digits


@register
class Repeat(Task):
    name = "repeat"
    max_new_tokens = 48

    def build(self, rng, tok, length, depth):
        s = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(16, 40)))
        ctx, q, fixed = haystack(tok, rng, length, f"Repeat: {s}.", [], "Again:", self.name)
        return Sample(self.name, ctx, q, [s], f" {s}.", fixed, depth)

    def score(self, generated, sample):
        return float(generated.strip().split(".")[0] == sample.answers[0])
