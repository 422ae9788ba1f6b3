"""Shared pieces of the synthetic tasks: token-exact prompt assembly, filler, samples, errors.

A task prompt is built from token ids, piece by piece (head, filler, needles, question), so
its length is exact in tokens for any tokenizer (byte, tiktoken, hf): the filler is the only
part whose size is free, and it is cut to the token. Everything is a pure function of
(seed, tokenizer, length, depth) — no download, no global random state.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from data.errors import DataError
from data.synthetic import sentence


class TaskError(DataError):
    """A task that cannot be built as asked (unknown name, length too short, tokenizer mismatch)."""


@dataclass
class Sample:
    """One prompt: context (document start + haystack), question, and the expected answers.

    `answers` are the items the scorer looks for; `completion` is the canonical continuation a
    training document ends with (e.g. " 12345."). `fixed_tokens` is the prompt's size without
    filler: no prompt of this task can be shorter.
    """
    task: str
    context_ids: list[int]
    question_ids: list[int]
    answers: list[str]
    completion: str
    fixed_tokens: int
    depth: float
    meta: dict = field(default_factory=dict)

    @property
    def prompt_ids(self) -> list[int]:
        return self.context_ids + self.question_ids

    def jrt_prompt_ids(self, bos: int | None) -> list[int]:
        """"Just read twice": the context, again (without its document start), then the question."""
        body = self.context_ids[1:] if bos is not None and self.context_ids[:1] == [bos] else self.context_ids
        return self.context_ids + body + self.question_ids


def text_ids(tok, text: str) -> list[int]:
    """Token ids of `text` with no document markers."""
    if hasattr(tok, "encode"):
        return [int(i) for i in tok.encode(text)]
    return [int(i) for i in tok.encode_document(text)[:-1]]      # tiktoken / hf: strip the end token


def doc_start(tok) -> list[int]:
    """What a packed document starts with under this tokenizer (BOS for bytes, nothing for BPE)."""
    ids = [int(i) for i in tok.encode_document("")]
    return ids[:-1]


def bos_of(tok) -> int | None:
    start = doc_start(tok)
    return start[0] if start else None


def check_encodable(tok, text: str, what: str) -> None:
    """The tokenizer must give `text` back unchanged, or exact-match scoring is meaningless."""
    back = tok.decode(text_ids(tok, text))
    if back != text:
        raise TaskError(f"tokenizer {getattr(tok, 'name', tok)!r} cannot encode the {what} {text!r} "
                        f"(decodes to {back!r}); use a tokenizer that round-trips plain ASCII")


def filler_ids(tok, rng: random.Random, n: int) -> tuple[list[int], list[int]]:
    """Exactly n tokens of filler prose (whole sentences, the first one entered part-way at a
    token), and the offsets where its sentences start (needles go there, never inside a word)."""
    out: list[int] = []
    starts: list[int] = []
    while len(out) < n:
        starts.append(len(out))
        out += text_ids(tok, " " + sentence(rng))
    drop = len(out) - n
    whole = [s - drop for s in starts if s >= drop]
    return out[drop:], sorted({n, *(whole or [0])})


def case_seed(*parts) -> int:
    """A stable 31-bit seed from ints/floats/strings (Python's hash() of str is salted per process)."""
    h = 1469598103934665603
    for p in parts:
        for ch in repr(p).encode():
            h = ((h ^ ch) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFF


def haystack(tok, rng: random.Random, length: int, head: str, needles: list[tuple[float, str]],
             question: str, task: str) -> tuple[list[int], list[int], int]:
    """(context ids, question ids, fixed tokens): document start + head + filler with the needles
    inserted at their depths (0 = start of the filler, 1 = its end) + question, `length` tokens in all."""
    start = doc_start(tok)
    head_ids = text_ids(tok, head)
    needle_ids = [(d, text_ids(tok, " " + t)) for d, t in sorted(needles, key=lambda x: x[0])]
    q_ids = text_ids(tok, " " + question)
    fixed = len(start) + len(head_ids) + sum(len(n) for _, n in needle_ids) + len(q_ids)
    budget = length - fixed
    if budget < 0:
        raise TaskError(f"length {length} is shorter than the fixed parts of a {task} prompt ({fixed} tokens); "
                        f"ask for lengths of at least {fixed}")
    fill, starts = filler_ids(tok, rng, budget)
    ctx = start + head_ids
    cut = 0
    for d, ids in needle_ids:
        at = max(cut, min(starts, key=lambda s: abs(s - d * budget)))   # the nearest sentence start
        ctx += fill[cut:at] + ids
        cut = at
    ctx += fill[cut:]
    return ctx, q_ids, fixed


def number(rng: random.Random) -> str:
    return str(rng.randint(10000, 99999))


def distinct(rng: random.Random, n: int, draw) -> list:
    """n different values of draw(rng), in the order drawn (keys, values, variable names)."""
    out: list = []
    while len(out) < n:
        x = draw(rng)
        if x not in out:
            out.append(x)
    return out


def needle_depths(rng: random.Random, depth: float, n: int, later: bool = False) -> list[float]:
    """Depths of n needles: the first (the one the question is about) at `depth`, the others at
    random depths — anywhere, or (later=True, for chains such as variable tracking) after the
    first, in increasing order."""
    if later:
        return sorted([depth] + [depth + (1 - depth) * rng.random() for _ in range(n - 1)])
    return [depth] + [rng.random() for _ in range(n - 1)]
