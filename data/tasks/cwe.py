"""Common-words extraction: a long list of words in which a few appear more often than any other;
the answer names them (score = fraction named). Depth has no meaning here: one row per length."""
from __future__ import annotations

from collections import Counter

from data.tasks.base import Sample, TaskError, doc_start, text_ids
from data.tasks.registry import Task, register

HEAD = "A list of words; some appear more often than others:"
# short made-up words (consonant-vowel-consonant): 4 tokens each in bytes, so the task fits T = 256
POOL = [a + v + b for a in "bdfgklmnprst" for v in "aeiou" for b in "bgkmnt"]


@register
class CommonWords(Task):
    name = "cwe"
    common = 3
    rare_per_round = 3
    uses_depth = False
    max_new_tokens = 32

    def build(self, rng, tok, length, depth):
        common = rng.sample(POOL, self.common)
        rare = [w for w in POOL if w not in common]
        rng.shuffle(rare)
        rounds = []
        for r in range(max(2, length // 8)):           # more than any length needs; each round is shuffled
            words = common + [rare[(r * self.rare_per_round + j) % len(rare)] for j in range(self.rare_per_round)]
            rng.shuffle(words)
            rounds.append(words)
        question = f"Which {self.common} words appear most often above? They are"
        start, head, q = doc_start(tok), text_ids(tok, HEAD), text_ids(tok, " " + question)
        items: list[list[int]] = [text_ids(tok, " " + w) for rnd in rounds for w in rnd]
        words = [w for rnd in rounds for w in rnd]
        n_two_rounds = 2 * (self.common + self.rare_per_round)
        fixed = len(start) + len(head) + len(q) + sum(len(x) for x in items[:n_two_rounds])
        if length < fixed:
            raise TaskError(f"length {length} is shorter than the fixed parts of a {self.name} prompt "
                            f"({fixed} tokens with two rounds of words); ask for lengths of at least {fixed}")
        budget = length - fixed + sum(len(x) for x in items[:n_two_rounds])
        body: list[int] = []
        whole = 0
        for x in items:
            if len(body) >= budget:
                break
            body += x
            whole += len(body) <= budget
        counts = Counter(words[:whole])
        top = min(counts[w] for w in common)
        assert all(c < top for w, c in counts.items() if w not in common), "common words must be the most frequent"
        ctx = start + head + body[:budget]
        return Sample(self.name, ctx, q, common, " " + " ".join(common) + ".", fixed, depth)

    def score(self, generated, sample):
        said = set(generated.replace(".", " ").replace(",", " ").split())
        return sum(a in said for a in sample.answers) / len(sample.answers)
