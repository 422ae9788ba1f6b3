"""Data: the Batch contract, tokenizers, the synthetic corpus, packing, loaders, curricula."""
from __future__ import annotations

from data.batch import Batch

__all__ = ["Batch"]
