"""The embedded synthetic corpus: long documents that need no download.

Each document is a pure function of (seed, index): filler prose from a small built-in
grammar, mixed with retrieval tasks whose answers sit far from their questions:
- passkey: a number hidden at a random depth, asked for at the end (the classic prompt shape
  that train/evaluate.py also uses);
- key-value recall: several `key = value` records, one of them queried at the end;
- copying: a random string, repeated after filler.
Filler is learnable (a small vocabulary and fixed sentence frames); the task answers are
only predictable by looking back, which is what long-context training is about.
"""
from __future__ import annotations

import random

ADJ = ("quiet", "green", "ancient", "bright", "small", "heavy", "distant", "gentle", "silver", "broken",
       "narrow", "golden", "cold", "hidden", "early", "patient")
NOUN = ("river", "garden", "lantern", "mountain", "letter", "harbor", "engine", "forest", "market",
        "window", "bridge", "teacher", "sailor", "village", "machine", "library", "orchard", "tower")
VERB = ("watches", "follows", "builds", "carries", "finds", "paints", "repairs", "remembers", "crosses",
        "opens", "guards", "measures", "visits", "describes")
PREP = ("near", "behind", "under", "beside", "across", "beyond", "inside", "above")
TIME = ("at dawn", "every morning", "in winter", "after the rain", "at night", "before noon",
        "in spring", "all day")
INSTRUCTION = ("There is an important piece of information hidden inside a lot of irrelevant text. "
               "Find it and memorize it. I will quiz you about it.")
GRASS = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def sentence(rng: random.Random) -> str:
    a = f"The {rng.choice(ADJ)} {rng.choice(NOUN)} {rng.choice(VERB)} the {rng.choice(NOUN)}"
    if rng.random() < 0.6:
        a += f" {rng.choice(PREP)} the {rng.choice(ADJ)} {rng.choice(NOUN)}"
    if rng.random() < 0.4:
        a += f" {rng.choice(TIME)}"
    return a + "."


def filler(rng: random.Random, n_chars: int) -> str:
    parts: list[str] = []
    size = 0
    while size < n_chars:
        s = sentence(rng)
        parts.append(s)
        size += len(s) + 1
    return " ".join(parts)


def passkey_needle(key: str) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


PASSKEY_QUESTION = "What is the pass key? The pass key is"


def passkey_document(rng: random.Random, n_chars: int, depth: float | None = None) -> str:
    key = str(rng.randint(10000, 99999))
    depth = rng.random() if depth is None else depth
    body = max(0, n_chars - len(INSTRUCTION) - 120)
    before = filler(rng, int(body * depth))
    after = filler(rng, body - int(body * depth))
    return f"{INSTRUCTION} {before} {passkey_needle(key)} {after} {PASSKEY_QUESTION} {key}."


def kv_document(rng: random.Random, n_chars: int) -> str:
    n = rng.randint(3, 8)
    keys = rng.sample(range(100, 1000), n)
    values = [rng.choice(NOUN) for _ in keys]
    chunks = []
    per = max(1, n_chars // (n + 1))
    for k, v in zip(keys, values):
        chunks.append(f"Record k{k} = {v}.")
        chunks.append(filler(rng, per))
    i = rng.randrange(n)
    return " ".join(chunks) + f" Recall k{keys[i]}: {values[i]}."


def copy_document(rng: random.Random, n_chars: int) -> str:
    s = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(8, 24)))
    return f"Copy this: {s}. {filler(rng, max(0, n_chars - 2 * len(s) - 30))} Copy: {s}."


def synthetic_document(seed: int, index: int, min_chars: int = 400, max_chars: int = 6000) -> str:
    """Document `index` of the corpus with seed `seed` (deterministic, independent of any other)."""
    rng = random.Random(seed * 1_000_003 + index)
    n = rng.randint(min_chars, max_chars)
    kind = rng.random()
    if kind < 0.3:
        return passkey_document(rng, n)
    if kind < 0.55:
        return kv_document(rng, n)
    if kind < 0.75:
        return copy_document(rng, n)
    return filler(rng, n)


def passkey_prompt(n_chars: int, depth: float, seed: int) -> tuple[str, str]:
    """A passkey evaluation prompt of about n_chars characters with the needle at `depth` (0..1).

    Returns (prompt ending in the question, expected key). Same shape as the training documents.
    """
    rng = random.Random(seed)
    doc = passkey_document(rng, n_chars, depth)
    cut = doc.rindex(PASSKEY_QUESTION) + len(PASSKEY_QUESTION)
    answer = doc[cut:].strip().rstrip(".")
    return doc[:cut], answer
