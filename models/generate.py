"""Decoding: prefill the prompt with the parallel forward, then step one token at a time.

The prefill's `return_states` caches are exactly what each mixer's `step` continues from, so
generation costs O(1) per token for M and R layers, O(window) for W and O(context) for `*`.
"""
from __future__ import annotations

import torch


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """Token ids [B] from logits [B, V]: greedy when temperature == 0, else sampled."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    scaled = logits.float() / temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int | None = None, eos_id: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """prompt [B, T0] (one document per row) -> [B, T0 + n] with n ≤ max_new_tokens new tokens.

    Greedy by default. With eos_id, a row that has produced it keeps emitting eos_id and
    generation stops early once every row has.
    """
    if prompt.ndim != 2 or prompt.shape[1] == 0:
        raise ValueError("generate: prompt must be a non-empty [batch, tokens] tensor of token ids")
    out = [prompt]
    if max_new_tokens <= 0:
        return prompt
    logits, caches = model(prompt, return_states=True)
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    for i in range(max_new_tokens):
        nxt = sample_next(logits[:, -1] if logits.ndim == 3 else logits, temperature, top_k, generator)
        if eos_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done = done | (nxt == eos_id)
        out.append(nxt[:, None])
        if i == max_new_tokens - 1 or (eos_id is not None and bool(done.all())):
            break
        logits, caches = model.step(nxt, caches)
    return torch.cat(out, dim=1)
