"""Tensor parallelism (Megatron-style), see plan.py for the design choice."""
from parallel.tensor.cross_entropy import vocab_parallel_cross_entropy
from parallel.tensor.plan import apply_tensor_parallel

__all__ = ["apply_tensor_parallel", "vocab_parallel_cross_entropy"]
