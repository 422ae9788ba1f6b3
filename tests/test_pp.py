"""Pipeline stage cutting: contiguous, non-empty, FLOP-balanced; stage models keep the
single-process parameter names (so checkpoints reshard across pp)."""
from __future__ import annotations

import itertools

import pytest

import models
from models.config import ModelConfig
from parallel.pipeline.split import balanced_split, layer_costs
from parallel.pipeline.stage import PipelineModel


def brute_force(costs, n, tail):
    best = None
    for cuts in itertools.combinations(range(1, len(costs)), n - 1):
        bounds = [0, *cuts, len(costs)]
        parts = [sum(costs[a:b]) + (tail if i == n - 1 else 0) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
        if best is None or max(parts) < best:
            best = max(parts)
    return best


@pytest.mark.parametrize("costs,n,tail", [([1, 1, 1, 1], 2, 0), ([5, 1, 1, 1, 1, 1], 2, 0),
                                           ([3, 1, 4, 1, 5, 9, 2, 6], 3, 4), ([1, 2, 3], 3, 10)])
def test_balanced_split_is_optimal_and_contiguous(costs, n, tail):
    ranges = balanced_split(costs, n, tail)
    assert len(ranges) == n and ranges[0][0] == 0 and ranges[-1][1] == len(costs)
    assert all(a < b for a, b in ranges) and all(r[1] == s[0] for r, s in zip(ranges, ranges[1:]))
    parts = [sum(costs[a:b]) + (tail if i == n - 1 else 0) for i, (a, b) in enumerate(ranges)]
    assert max(parts) == brute_force(costs, n, tail)


def test_flop_balance_puts_fewer_costly_layers_on_a_stage():
    model = models.build(ModelConfig(pattern="*-*-M-M-", d_model=32, n_heads=4, ssm_headdim=8, d_state=8))
    costs = layer_costs(model, seq_len=64)
    assert costs[0] != costs[1]                        # attention and MLP differ, so cuts are not by count
    ranges = balanced_split(costs, 2, tail_cost=6.0 * 32 * 260)
    assert ranges[0][0] == 0 and ranges[1][1] == 8


def test_stage_models_keep_global_parameter_names():
    model = models.build(ModelConfig(pattern="(*-)x2", d_model=32, n_heads=4))
    names = {n for n, _ in model.named_parameters()}
    first = PipelineModel(model, [0, 1], first=True, last=False)
    last = PipelineModel(model, [2, 3], first=False, last=True)
    got = {n for n, _ in first.named_parameters()} | {n for n, _ in last.named_parameters()}
    assert got == names
    assert "embed.weight" in dict(last.named_parameters())     # tied head on the last stage
    assert [b.layer_idx for b in last.layers] == [2, 3]
