"""Cut the layer stack into pipeline stages on layer boundaries, balanced by FLOPs.

Each layer's cost is its training FLOPs per token (models/flops.py conventions: linear
weights, attention over the visible keys, mixer-declared scan work); the embedding lookup
is free, the LM head costs 6·d·V and sits on the last stage. A small dynamic program finds
the contiguous split into `n` non-empty parts that minimises the most expensive part.
"""
from __future__ import annotations

from torch import nn

from models.flops import layer_flops


def layer_costs(model: nn.Module, seq_len: int) -> list[float]:
    return [layer_flops(block, seq_len) for block in model.layers]


def balanced_split(costs: list[float], n: int, tail_cost: float = 0.0) -> list[tuple[int, int]]:
    """`n` contiguous [start, stop) ranges over len(costs) layers minimising the max part cost
    (the last part also pays `tail_cost`, the LM head)."""
    L = len(costs)
    if n > L:
        raise ValueError(f"cannot cut {L} layers into {n} pipeline stages")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[k][i]: minimal max cost splitting the first i layers into k parts
    best = [[inf] * (L + 1) for _ in range(n + 1)]
    cut = [[0] * (L + 1) for _ in range(n + 1)]
    best[0][0] = 0.0
    for k in range(1, n + 1):
        for i in range(k, L - (n - k) + 1):
            for j in range(k - 1, i):
                part = prefix[i] - prefix[j] + (tail_cost if k == n else 0.0)
                value = max(best[k - 1][j], part)
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    ranges, i = [], L
    for k in range(n, 0, -1):
        j = cut[k][i]
        ranges.append((j, i))
        i = j
    return ranges[::-1]
