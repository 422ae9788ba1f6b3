"""Length curricula: sequence-length warmup and Dataset Decomposition sampling orders.

Sequence-length warmup follows DeepSpeed's curriculum scheduler (seqlen difficulty):
- fixed_linear / fixed_root:  L(t) = floor((t/T)^(1/r)·(Lmax−Lmin) + Lmin), rounded down to a
  multiple of `step`, capped at Lmax (fixed_linear is r = 1);
- fixed_discrete: lengths[i] while t <= max_steps[i]; lengths[-1] after the last boundary
  (len(lengths) = len(max_steps) + 1, as in DeepSpeed).
t counts optimizer steps from 1 (DeepSpeed passes global_steps + 1), so the first step
trains at L(1). Everything is a pure function of t: the loader's step counter is the
curriculum's whole state.

Dataset Decomposition (Pouransari et al., 2024) samples, at every step, bucket k with
probability ∝ remaining_batches_k × w_k; a bucket drops out when exhausted and a new cycle
starts when all are. The orders differ only in the odds w (bucket 0 = shortest):
uniform 1:1:…:1 · grow_linear n:…:2:1 · grow_p2 2^(n−1):…:2:1 · grow_p100 100^(n−1):…:1 ·
shrink 1:100:…:100^(n−1) (long first). "grow" favours short buckets early; as they run out
the long ones take over, which is the curriculum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data.errors import DataError

WARMUP_SCHEDULES = ("fixed_linear", "fixed_root", "fixed_discrete")
DD_ORDERS = ("uniform", "grow_linear", "grow_p2", "grow_p100", "shrink")


class CurriculumError(DataError):
    """A curriculum setting that cannot work (one-line message naming the data.* key)."""


@dataclass
class SeqLenWarmup:
    schedule: str
    min_len: int
    max_len: int
    total_steps: int
    root_degree: float = 2.0
    len_step: int = 8
    discrete_lens: tuple[int, ...] = ()
    discrete_steps: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.schedule not in WARMUP_SCHEDULES:
            raise CurriculumError(f"data.curriculum must be none or one of {', '.join(WARMUP_SCHEDULES)}; "
                                  f"got {self.schedule!r}")
        if self.schedule == "fixed_discrete":
            if len(self.discrete_lens) != len(self.discrete_steps) + 1:
                raise CurriculumError("fixed_discrete needs len(data.curriculum_lens) = "
                                      "len(data.curriculum_max_steps) + 1")
            if any(length > self.max_len or length <= 0 for length in self.discrete_lens):
                raise CurriculumError(f"data.curriculum_lens must lie in 1..data.seq_len={self.max_len}")
            return
        if not 0 < self.min_len <= self.max_len:
            raise CurriculumError(f"data.curriculum_min_len={self.min_len} must be in 1..data.seq_len={self.max_len}")
        if self.len_step <= 0 or self.min_len % self.len_step or self.max_len % self.len_step:
            raise CurriculumError(f"data.curriculum_min_len ({self.min_len}) and data.seq_len ({self.max_len}) "
                                  f"must be multiples of data.curriculum_len_step ({self.len_step})")
        if self.total_steps <= 0:
            raise CurriculumError("data.curriculum_steps must be > 0")

    def length(self, t: int) -> int:
        """Sequence length at optimizer step t (1-based)."""
        if self.schedule == "fixed_discrete":
            for length, last in zip(self.discrete_lens, self.discrete_steps):
                if t <= last:
                    return int(length)
            return int(self.discrete_lens[-1])
        r = 1.0 if self.schedule == "fixed_linear" else float(self.root_degree)
        frac = min(1.0, max(0.0, t / self.total_steps)) ** (1.0 / r)
        length = math.floor(frac * (self.max_len - self.min_len) + self.min_len)
        length -= length % self.len_step
        return int(min(length, self.max_len))


def dd_weights(order: str, n_buckets: int) -> np.ndarray:
    """Odds w_k of each bucket (index 0 = shortest) for a Dataset Decomposition order."""
    k = np.arange(n_buckets, dtype=np.float64)
    rev = n_buckets - 1 - k
    table = {
        "uniform": np.ones(n_buckets),
        "grow_linear": rev + 1,
        "grow_p2": 2.0 ** rev,
        "grow_p100": 100.0 ** rev,
        "shrink": 100.0 ** k,
    }
    if order not in table:
        raise CurriculumError(f"data.dd_order must be one of {', '.join(DD_ORDERS)}; got {order!r}")
    return table[order]


def choose_bucket(remaining: np.ndarray, weights: np.ndarray, u: float) -> int:
    """The bucket drawn by uniform u ∈ [0, 1) with P(k) ∝ remaining_k·w_k; -1 when all are exhausted."""
    p = remaining.astype(np.float64) * weights
    total = p.sum()
    if total <= 0:
        return -1
    k = int(np.searchsorted(np.cumsum(p) / total, u, side="right"))
    k = min(k, len(p) - 1)
    while p[k] == 0:          # guard against float round-off landing on an empty bucket
        k -= 1
    return k
