"""DataError: a user error in the data settings or files, reported by the CLI as one line (exit 2)."""
from __future__ import annotations


class DataError(ValueError):
    """Bad data.* settings, a missing/mismatched manifest, an unavailable tokenizer."""
