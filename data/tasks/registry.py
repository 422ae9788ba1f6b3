"""The task registry and the Task protocol every task module implements."""
from __future__ import annotations

import random
import re

from data.tasks.base import Sample, TaskError, bos_of, case_seed, check_encodable, text_ids

TASKS: dict[str, Task] = {}
WARMUPS: dict = {}          # training-only document kinds (no prompt to score): name -> object with document()


class Task:
    """Subclasses set `name` and implement `build(rng, tok, length, depth) -> Sample`."""
    name = ""
    max_new_tokens = 8          # greedy decoding budget (tokens) for evaluation

    def build(self, rng: random.Random, tok, length: int, depth: float) -> Sample:
        raise NotImplementedError

    def sample(self, tok, length: int, depth: float, seed: int) -> Sample:
        """The evaluation prompt of exactly `length` tokens (a pure function of the arguments)."""
        s = self.build(random.Random(case_seed(self.name, seed, length, round(depth * 1e4))), tok, length, depth)
        for a in s.answers:
            check_encodable(tok, a, f"{self.name} answer")
        return s

    def document(self, tok, length: int, seed: int, depth: float | None = None) -> list[int]:
        """A training document of `length` tokens (more only when its fixed parts need it): prompt +
        completion + end token."""
        prompt, tail = self.document_parts(tok, length, seed, depth)
        return prompt + tail

    def document_parts(self, tok, length: int, seed: int,
                       depth: float | None = None) -> tuple[list[int], list[int]]:
        """`document`'s prompt and its completion + end token, apart (data.task_loss = "answers"
        scores the second only)."""
        rng0 = random.Random(seed)
        depth = rng0.random() if depth is None else depth
        # same rng → same answers and needles; the probe's extra room makes it buildable at any length
        probe = self.build(random.Random(seed), tok, length + 1024, depth)
        tail = text_ids(tok, probe.completion) + [int(tok.eos)]
        body = max(length - len(tail), probe.fixed_tokens)      # never below the fixed parts
        s = self.build(random.Random(seed), tok, body, depth)
        return s.prompt_ids, tail

    def score(self, generated: str, sample: Sample) -> float:
        """Fraction of the expected items found in the continuation (RULER's string-match-all)."""
        return sum(a.strip() in generated for a in sample.answers) / len(sample.answers)

    def jrt_ids(self, tok, sample: Sample) -> list[int]:
        return sample.jrt_prompt_ids(bos_of(tok))


def first_number_is(generated: str, answer: str) -> float:
    """Exact match: the continuation's first number is the answer, with no extra digits."""
    m = re.match(r"\s*(\d+)", generated)
    return float(m is not None and m.group(1) == answer.strip())


def register(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls()
    return cls


class Warmup:
    """A training-only document kind: subclasses set `name` and implement `document(tok, length, seed)`."""
    name = ""

    def min_length(self, tok) -> int:
        """Its shortest document (what a length of 0 builds)."""
        return len(self.document(tok, 0, 0))


class ScoredWarmup(Warmup):
    """A warm-up kind that marks which tokens are scored: subclasses implement
    `document_scored(tok, length, seed) -> (ids, scored)`; the document is its ids."""

    def document(self, tok, length: int, seed: int, depth: float | None = None) -> list[int]:
        return self.document_scored(tok, length, seed)[0]


def register_warmup(cls):
    WARMUPS[cls.name] = cls()
    return cls


def get_training_kind(name: str):
    """A task or a training-only warm-up, for data.tasks."""
    if name in WARMUPS:
        return WARMUPS[name]
    if name not in TASKS:
        raise TaskError(f"unknown data.tasks entry {name!r}; known: {', '.join(sorted([*TASKS, *WARMUPS]))}")
    return TASKS[name]


def task_names() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
    return TASKS[name]
