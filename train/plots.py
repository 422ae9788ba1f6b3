"""Evaluation plots: the passkey accuracy heatmap and loss-by-position curves.

Both mark the training length, because the question they answer is "what happens past it".
matplotlib is imported lazily (Agg backend) so training never needs a display, and figures
are also returned as HWC uint8 arrays for TensorBoard.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("matplotlib is needed for evaluation plots; pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, path: str | Path | None) -> np.ndarray:
    plt = _plt()
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=80)
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img


def _fmt_len(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def passkey_heatmap(accuracy: list[list[float]], lengths: list[int], depths: list[float], train_len: int,
                    path: str | Path | None = None, title: str = "passkey retrieval") -> np.ndarray:
    """Depth (rows) × length (columns) accuracy, red (0) → green (1); a dashed line at the train length."""
    plt = _plt()
    acc = np.asarray(accuracy, dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(lengths), 1.2 + 0.35 * len(depths)))
    im = ax.imshow(acc, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", origin="upper")
    ax.set_xticks(range(len(lengths)), [_fmt_len(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            ax.text(j, i, f"{acc[i, j]:.1f}", ha="center", va="center", fontsize=7)
    # the train length sits between columns: interpolate on log2(length)
    logs = np.log2(np.asarray(lengths, dtype=float))
    x = float(np.interp(np.log2(train_len), logs, np.arange(len(lengths)))) if len(lengths) > 1 else 0.0
    if len(lengths) == 1 or logs[0] <= np.log2(train_len) <= logs[-1]:
        ax.axvline(x, color="black", linestyle="--", linewidth=1.5)
    ax.set_title(f"{title} (train length {_fmt_len(train_len)}, dashed)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    return _finish(fig, path)


def loss_by_position_plot(curves: dict[str, tuple[list[int], list[float]]], train_len: int,
                          path: str | Path | None = None, title: str = "loss by token position") -> np.ndarray:
    """One line per curve {label: (bin centre positions, mean loss)}; a dashed line at the train length."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, (pos, loss) in curves.items():
        ax.plot(pos, loss, label=label, linewidth=1.2)
    ax.axvline(train_len, color="black", linestyle="--", linewidth=1.2, label=f"train length {_fmt_len(train_len)}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("token position")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _finish(fig, path)
