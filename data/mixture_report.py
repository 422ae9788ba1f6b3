"""The mixture's start-of-run report: what each source contributes after filters and upsampling.

Printed by the trainer at start and logged to TensorBoard as text (tag data/mix); the tokens each
source has actually supplied are logged every metrics step (data/tokens/*, data/share/*).
"""
from __future__ import annotations

import numpy as np

EDGES = (0, 128, 512, 2048, 8192, 32768, 131072)


def _label(lo: int, hi: int | None) -> str:
    def k(n: int) -> str:
        return f"{n // 1024}K" if n >= 1024 else str(n)
    return f">={k(lo)}" if hi is None else f"{k(lo)}-{k(hi)}"


def length_histogram(lengths: list[np.ndarray], counts: list[np.ndarray]) -> np.ndarray:
    """Tokens per epoch in each document-length bin of EDGES (copies counted)."""
    flat = np.concatenate(lengths)
    reps = np.concatenate(counts)
    bins = np.searchsorted(np.asarray(EDGES[1:]), flat, side="right")
    return np.bincount(bins, weights=(flat * reps).astype(np.float64), minlength=len(EDGES))


def describe_mixture(loader) -> list[str]:
    weights = np.asarray([src.weight for src in loader.sources], dtype=np.float64)
    share = weights / weights.sum()
    width = max(6, *(len(n) for n in loader.names))
    lines = [f"data mixture: {len(loader.names)} sources (seed {loader.seed}); per epoch after filters and "
             "upsampling:",
             f"  {'source':<{width}}  format    share   docs/epoch (of)        tokens/epoch  long docs (L, a/b)"]
    for i, (name, src, corpus, counts) in enumerate(zip(loader.names, loader.sources, loader.corpora,
                                                        loader.counts)):
        flat, reps = np.concatenate(corpus.lengths), np.concatenate(counts)
        total_docs = len(flat)
        docs = int(reps.sum())
        tokens = int((flat * reps).sum())
        long = f"{int((reps * (flat >= src.long_doc_len)).sum()):,} (L={src.long_doc_len}, " \
               f"{src.long_doc_rate:g}/{src.short_doc_rate:g})" if src.long_doc_len else "-"
        lines.append(f"  {name:<{width}}  {src.format:<8}  {share[i]:5.1%}  {docs:>10,} ({total_docs:>9,})  "
                     f"{tokens:>14,}  {long}")
    labels = [_label(lo, hi) for lo, hi in zip(EDGES, (*EDGES[1:], None))]
    lines.append("  document-length histogram (share of each source's tokens per epoch):")
    lines.append(f"  {'source':<{width}}  " + "  ".join(f"{x:>8}" for x in labels))
    for name, corpus, counts in zip(loader.names, loader.corpora, loader.counts):
        hist = length_histogram(corpus.lengths, counts)
        frac = hist / max(hist.sum(), 1.0)
        lines.append(f"  {name:<{width}}  " + "  ".join(f"{x:>8.1%}" for x in frac))
    return lines
