"""Sequence parallelism the LightSeq way: DistAttn, halos and exact recurrent state passing.

`SequenceParallelHooks(group)` is what the model receives as `sp=`; see hooks.py.
"""
from parallel.sequence.distattn import CallRecord, dist_attention
from parallel.sequence.hooks import SequenceParallelHooks
from parallel.sequence.schedule import n_rounds, ring_rounds, round_plan

__all__ = ["SequenceParallelHooks", "dist_attention", "CallRecord", "n_rounds", "ring_rounds", "round_plan"]
