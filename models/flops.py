"""Training FLOPs per token, for MFU.

Convention (PaLM / Megatron): a matmul of an [n, k] input by a [k, m] weight costs 2·n·k·m
FLOPs forward and twice that backward, so training costs 3x forward. Per token:
- every linear layer: 6 · (its parameter count), the LM head included, the embedding lookup not;
- attention scores and weighted sum: 3 · 2 · 2 · H · D_head · C, where C is the mean number of
  keys a query sees: (T + 1)/2 for causal attention over T tokens, and for a window w
  (w ≤ T) (w·(w+1)/2 + (T − w)·w) / T. Counting only visible keys is what fused kernels
  actually compute (FlashAttention's convention for causal).
Mixers may define `flops_per_token(seq_len)` (forward, per token, excluding their linear
layers) to add their own non-matmul work: `M` (models/mamba2.py) adds the depthwise conv and
the chunked SSD (C·Bᵀ and scores·x over chunks of L tokens, chunk states, state→output);
`R` (models/griffin.py) adds the conv, the block-diagonal gates and the recurrence. Both are
linear in T, so their per-token cost is flat; `*` grows with T, `W` saturates at the window.
MLP (`-`) is linear layers only.
"""
from __future__ import annotations

from torch import nn


def mean_visible_keys(seq_len: int, window: int | None) -> float:
    t = seq_len
    if window is None or window >= t:
        return (t + 1) / 2
    w = window
    return (w * (w + 1) / 2 + (t - w) * w) / t


def linear_params(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token of a LanguageModel at sequence length seq_len."""
    from models.attention import Attention

    fwd = 2.0 * model.cfg.d_model * model.cfg.vocab_size      # LM head (tied or not)
    for block in model.layers:
        mixer = block.mixer
        fwd += 2.0 * linear_params(mixer)
        if isinstance(mixer, Attention):
            heads = mixer.wq.out_features // mixer.head_dim
            fwd += 4.0 * heads * mixer.head_dim * mean_visible_keys(seq_len, mixer.window)
        elif hasattr(mixer, "flops_per_token"):
            fwd += float(mixer.flops_per_token(seq_len))
    return 3.0 * fwd
