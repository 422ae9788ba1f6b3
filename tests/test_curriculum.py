"""Length curricula: DeepSpeed seqlen warmup formulas and Dataset Decomposition sampling orders."""
from __future__ import annotations

import math

import numpy as np
import pytest

from data.curriculum import CurriculumError, SeqLenWarmup, choose_bucket, dd_weights
from data.decompose import decompose
from data.loader import build_warmup, possible_lengths
from data.plans import DDPlan
from train.config import load_config


def deepspeed_root(t, total, r, lo, hi, step):
    """DeepSpeed's __fixed_root_get_difficulty, written out independently."""
    d = math.floor((float(t) / total) ** (1.0 / r) * (hi - lo) + lo)
    d -= d % step
    return min(d, hi)


@pytest.mark.parametrize("t,want", [(0, 64), (1, 72), (50, 544), (99, 1008), (100, 1024), (250, 1024)])
def test_fixed_linear(t, want):
    w = SeqLenWarmup("fixed_linear", 64, 1024, 100, len_step=8)
    assert w.length(t) == want == deepspeed_root(min(t, 100), 100, 1, 64, 1024, 8)


@pytest.mark.parametrize("t,want", [(1, 160), (10, 360), (25, 544), (64, 832), (100, 1024)])
def test_fixed_root(t, want):
    w = SeqLenWarmup("fixed_root", 64, 1024, 100, root_degree=2, len_step=8)
    assert w.length(t) == want == deepspeed_root(t, 100, 2, 64, 1024, 8)
    assert all(w.length(s) % 8 == 0 for s in range(1, 120))
    assert [w.length(s) for s in range(1, 120)] == sorted(w.length(s) for s in range(1, 120))


def test_fixed_discrete():
    w = SeqLenWarmup("fixed_discrete", 0, 512, 0, discrete_lens=(128, 256, 512), discrete_steps=(10, 20))
    assert [w.length(t) for t in (1, 10, 11, 20, 21, 1000)] == [128, 128, 256, 256, 512, 512]


def test_bad_warmup_settings_are_one_line_errors():
    with pytest.raises(CurriculumError, match="multiples of data.curriculum_len_step"):
        SeqLenWarmup("fixed_linear", 60, 1024, 100, len_step=8)
    with pytest.raises(CurriculumError, match="len\\(data.curriculum_lens\\)"):
        SeqLenWarmup("fixed_discrete", 0, 512, 0, discrete_lens=(128,), discrete_steps=(10,))


def test_config_selects_warmup_and_lists_lengths():
    cfg = load_config(None, ["--data.curriculum=fixed_root", "--data.curriculum_min_len=32", "--data.seq_len=128",
                             "--data.curriculum_steps=16", "--data.curriculum_len_step=16"])
    w = build_warmup(cfg.data)
    assert w.length(1) == deepspeed_root(1, 16, 2, 32, 128, 16)
    assert set(possible_lengths(cfg.data)) == {w.length(t) for t in range(1, 18)} | {128}
    cfg = load_config(None, ["--data.packing=dd", "--data.dd_min_len=16", "--data.seq_len=128"])
    assert possible_lengths(cfg.data) == [16, 32, 64, 128]


def test_dd_odds_and_choice():
    np.testing.assert_array_equal(dd_weights("uniform", 3), [1, 1, 1])
    np.testing.assert_array_equal(dd_weights("grow_linear", 3), [3, 2, 1])
    np.testing.assert_array_equal(dd_weights("grow_p2", 3), [4, 2, 1])
    np.testing.assert_array_equal(dd_weights("grow_p100", 3), [10000, 100, 1])
    np.testing.assert_array_equal(dd_weights("shrink", 3), [1, 100, 10000])
    rem, w = np.array([0, 5, 5]), np.ones(3)
    assert choose_bucket(rem, w, 0.0) == 1 and choose_bucket(rem, w, 0.49) == 1 and choose_bucket(rem, w, 0.5) == 2
    assert choose_bucket(np.zeros(3, int), w, 0.3) == -1
    assert choose_bucket(np.array([3, 0, 0]), w, 0.999999999) == 0


class OneShard:
    """Enough of ShardCorpus for a DDPlan that is only sampled, never read."""
    n_shards = 1

    def locate(self, g):
        return np.zeros_like(g), g


def walk(order: str, lengths: np.ndarray, steps: int | None = None, seed: int = 0):
    dec = decompose(lengths, 8, 64, seed)
    plan = DDPlan(OneShard(), dec, seed, batch_size=2, seq_len=64, dp_size=1, order=order)
    state, picks = plan.initial_state(), []
    while True:
        spec = plan.spec(state)
        if spec[0] != 0 or (steps is not None and len(picks) == steps):
            return plan, picks, state
        picks.append(spec[1])
        state = plan.advance(state, spec)


@pytest.mark.parametrize("order", ["uniform", "grow_linear", "grow_p2", "grow_p100", "shrink"])
def test_dd_cycle_takes_every_full_batch_once(order):
    lengths = np.random.default_rng(0).integers(8, 600, size=300)
    plan, picks, state = walk(order, lengths)
    batches = plan.pieces // np.asarray(plan.rows_global)
    assert np.bincount(picks, minlength=len(batches)).tolist() == batches.tolist()
    assert state["consumed"] == (batches * np.asarray(plan.rows_global)).tolist()
    nxt = plan.spec(state)                                   # exhausted → the next cycle starts afresh
    assert nxt[0] == 1 and nxt[2] == 0


def test_grow_orders_go_short_to_long_and_shrink_long_to_short():
    lengths = np.random.default_rng(1).integers(8, 600, size=300)
    mean_first_half = {}
    for order in ("uniform", "grow_p2", "grow_p100", "shrink"):
        _, picks, _ = walk(order, lengths)
        half = len(picks) // 2
        mean_first_half[order] = np.mean(picks[:half]) - np.mean(picks[half:])
    assert mean_first_half["grow_p100"] < mean_first_half["grow_p2"] < mean_first_half["uniform"] + 0.3
    assert mean_first_half["grow_p100"] < -1.0 and mean_first_half["shrink"] > 1.0
    _, picks, _ = walk("grow_p100", lengths)
    assert picks[:5] == [0] * 5 and picks[-3:] == [3] * 3
