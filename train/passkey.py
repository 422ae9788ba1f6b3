"""Passkey retrieval: prompts over a length × depth grid, greedy decoding, exact-match scoring.

The prompt is the classic shape (instruction, filler, "The pass key is K. Remember it.",
filler, question) from the passkey task (data/tasks/passkey.py), exactly `length` tokens long.
train/task_eval.py runs every registered task the same way; this module keeps the passkey-only
API (build_case, run_passkey) and the decoding helpers both use.
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
                device: torch.device | str = "cpu", use_generate: bool = True,
                max_new_tokens: int = 8) -> dict:
    """Accuracy grid {length: {depth: acc}} plus every case's decoded text (for the JSON)."""
    model.eval()
    grid: dict[int, dict[float, float]] = {}
    cases_out = []
    for length in lengths:
        grid[length] = {}
        for depth in depths:
            hits = 0
            for trial in range(trials):
                case = build_case(tokenizer, length, depth, seed, trial)
                prompt = torch.tensor([case.prompt_ids], device=device)
                new = greedy_decode(model, prompt, max_new_tokens, use_generate)[0].tolist()
                text = tokenizer.decode(new)
                ok = score_passkey(text, case.key)
                hits += ok
                cases_out.append({"length": length, "depth": depth, "trial": trial, "tokens": len(case.prompt_ids),
                                  "key": case.key, "generated": text, "correct": ok})
            grid[length][depth] = hits / max(1, trials)
    return {"lengths": lengths, "depths": depths, "trials": trials,
            "accuracy": [[grid[L][d] for L in lengths] for d in depths],   # rows = depths, cols = lengths
            "mean_accuracy_by_length": {str(L): sum(grid[L].values()) / len(depths) for L in lengths},
            "cases": cases_out}
