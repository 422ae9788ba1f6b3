"""Task evaluation over a length × depth grid: prompts from data/tasks, greedy decoding, scoring.

Every registered task (data/tasks/*) runs the same way: for each length and depth, `trials`
prompts of exactly that many tokens, greedy continuation, the task's scorer (1 = every answer
item found). `jrt=True` runs the "just read twice" prompt instead (the context, again, then the
question; the length is the context's). Prompts are checked before any model runs: a length
shorter than a task's fixed parts, a tokenizer that cannot spell an answer, or token ids the
model's vocabulary does not have are errors (TaskError), never a silently truncated prompt.
"""
from __future__ import annotations

import sys
import time

import torch

from data.tasks import TaskError, get_task
from train.passkey import greedy_decode


def task_depths(task, depths: list[float]) -> list[float]:
    """The depth grid a task is scored on (one row for tasks where depth means nothing)."""
    return depths if getattr(task, "uses_depth", True) else [0.5]


def check_tasks(names: list[str], tokenizer, lengths: list[int], vocab_size: int | None, seed: int = 0) -> list:
    """The task objects, after building each task's shortest prompt once (raises TaskError)."""
    tasks = [get_task(n) for n in names]
    for task in tasks:
        s = task.sample(tokenizer, min(lengths), 0.5, seed)
        top = max(s.prompt_ids)
        if vocab_size is not None and top >= vocab_size:
            raise TaskError(f"task {task.name} with tokenizer {getattr(tokenizer, 'name', '?')} makes token id {top} "
                            f"but the model's vocab_size is {vocab_size}; evaluate with the model's own tokenizer")
    return tasks


# prompts decoded together: rows × prompt tokens stays under this, so a long prompt decodes alone
BATCH_TOKENS = 16384


def decode_batched(model, prompts: list[list[int]], max_new_tokens: int, device, use_generate: bool) -> list:
    """Greedy continuations of `prompts`, equal-length prompts decoded as one batch (prefill + step).

    One prompt at a time costs a Python-level decoding loop per prompt; a grid cell's prompts all
    have the asked length, so a length's whole grid is a handful of batched calls instead.
    """
    out: list = [None] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for i, ids in enumerate(prompts):
        by_len.setdefault(len(ids), []).append(i)
    for n, idx in by_len.items():
        rows = max(1, BATCH_TOKENS // n)
        for lo in range(0, len(idx), rows):
            part = idx[lo:lo + rows]
            batch = torch.tensor([prompts[i] for i in part], device=device)
            for i, new in zip(part, greedy_decode(model, batch, max_new_tokens, use_generate).tolist()):
                out[i] = new
    return out


@torch.no_grad()
def run_task(model, tokenizer, task, lengths: list[int], depths: list[float], trials: int, seed: int = 0,
             device: torch.device | str = "cpu", use_generate: bool = True, jrt: bool = False,
             progress=None) -> dict:
    """Score grid {length: {depth: mean score}} plus every case, as the JSON writes it."""
    model.eval()
    depths = task_depths(task, depths)
    label = task.name + (" (JRT)" if jrt else "")
    grid: dict[int, dict[float, float]] = {}
    cases = []
    for length in lengths:
        t0 = time.perf_counter()
        cells = [(depth, trial) for depth in depths for trial in range(trials)]
        samples = [task.sample(tokenizer, length, depth, seed * 1000 + trial) for depth, trial in cells]
        prompts = [task.jrt_ids(tokenizer, s) if jrt else s.prompt_ids for s in samples]
        generated = decode_batched(model, prompts, task.max_new_tokens, device, use_generate)
        totals = dict.fromkeys(depths, 0.0)
        for (depth, trial), s, ids, new in zip(cells, samples, prompts, generated):
            text = tokenizer.decode(new)
            score = task.score(text, s)
            totals[depth] += score
            cases.append({"length": length, "depth": depth, "trial": trial, "tokens": len(ids),
                          "answers": s.answers, "generated": text, "score": score})
        grid[length] = {depth: totals[depth] / max(1, trials) for depth in depths}
        mean = sum(grid[length].values()) / len(depths)
        if progress is not None:
            progress(f"{label:<22} length {length:>6}: {mean:.2f} ({len(depths)}×{trials} prompts, "
                     f"{time.perf_counter() - t0:.1f} s)")
    return {"task": task.name, "jrt": jrt, "lengths": lengths, "depths": depths, "trials": trials,
            "accuracy": [[grid[L][d] for L in lengths] for d in depths],     # rows = depths, cols = lengths
            "mean_accuracy_by_length": {str(L): sum(grid[L].values()) / len(depths) for L in lengths},
            "cases": cases}


def summary_table(scores: dict[str, dict], lengths: list[int], train_len: int) -> str:
    """A plain-text table: one row per task (and JRT variant), one column per length.

    `scores` maps a row name to {str(length): mean score} (a result's mean_accuracy_by_length)."""
    head = ["task"] + [f"{L}" + (" (T)" if L == train_len else "") for L in lengths]
    rows = [[name] + [f"{acc[str(L)]:.2f}" for L in lengths] for name, acc in scores.items()]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def print_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
