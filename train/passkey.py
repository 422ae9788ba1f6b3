"""Passkey retrieval: prompts over a length × depth grid, greedy decoding, exact-match scoring.

The prompt is the classic shape (instruction, filler, "The pass key is K. Remember it.",
filler, question) from the passkey task (data/tasks/passkey.py), exactly `length` tokens long.
train/task_eval.py runs every registered task the same way; this module keeps the passkey-only
API (build_case, score_passkey, and run_passkey, a thin call into task_eval.run_task) and the
decoding helpers both use.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from data.tasks import get_task


@dataclass
class PasskeyCase:
    length: int          # target prompt length in tokens (incl. BOS for tokenizers that have one)
    depth: float         # needle depth, 0 = start of the filler, 1 = end
    trial: int
    prompt_ids: list[int]
    key: str


def depth_grid(n: int) -> list[float]:
    """n evenly spaced needle depths from 0 to 1 (n = 1 gives the middle)."""
    if n <= 1:
        return [0.5]
    return [round(i / (n - 1), 4) for i in range(n)]


def build_case(tokenizer, length: int, depth: float, seed: int, trial: int = 0) -> PasskeyCase:
    """A prompt of exactly `length` tokens (document start + text) from the passkey task (data/tasks);
    the key is random per (seed, length, depth, trial). Raises TaskError below the prompt's fixed parts."""
    s = get_task("passkey").sample(tokenizer, length, depth, seed * 1000 + trial)
    return PasskeyCase(length, depth, trial, s.prompt_ids, s.answers[0])


def score_passkey(generated: str, key: str) -> bool:
    """Exact match: the first number in the continuation equals the key (no extra digits)."""
    m = re.match(r"\s*(\d+)", generated)
    return m is not None and m.group(1) == key


DecodeFn = Callable[[torch.Tensor, int], torch.Tensor]


def full_forward_greedy(model, prompt: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding by re-running the whole forward pass per token (slow, always correct).

    Used when the model has no `generate` (step mode) or when a forward-only feature (e.g. a
    collapse mitigation without a step path) must be honoured.
    """
    seq = prompt
    for _ in range(max_new_tokens):
        logits = model(seq)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq[:, prompt.shape[1]:]


def greedy_decode(model, prompt: torch.Tensor, max_new_tokens: int, use_generate: bool = True) -> torch.Tensor:
    """New tokens [B, max_new_tokens] by greedy decoding: `model.generate` (prefill + step) when available."""
    if use_generate and hasattr(model, "generate"):
        out = model.generate(prompt, max_new_tokens=max_new_tokens)
        return out[:, prompt.shape[1]:] if out.shape[1] > max_new_tokens else out
    return full_forward_greedy(model, prompt, max_new_tokens)


@torch.no_grad()
def run_passkey(model, tokenizer, lengths: list[int], depths: list[float], trials: int, seed: int = 0,
                device: torch.device | str = "cpu", use_generate: bool = True) -> dict:
    """run_task with the passkey task (batched decoding), each case also carrying its `key` and
    `correct` (the exact-match verdict) for callers written against this passkey-only API."""
    from train.task_eval import run_task  # task_eval imports this module's decoding helpers

    res = run_task(model, tokenizer, get_task("passkey"), lengths, depths, trials, seed=seed, device=device,
                   use_generate=use_generate)
    for c in res["cases"]:
        c["key"], c["correct"] = c["answers"][0], c["score"] == 1.0
    return res
