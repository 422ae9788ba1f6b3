"""Evaluation plots: the passkey accuracy heatmap and loss-by-position curves.

Both mark the training length, because the question they answer is "what happens past it".
matplotlib is imported lazily (Agg backend) so training never needs a display, and figures
are also returned as HWC uint8 arrays for TensorBoard.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

DPI = 130          # saved PNGs: readable at a glance in a README or a file viewer


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
        fig.savefig(path, dpi=DPI)
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img


def _fmt_len(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def _train_length_boundary(lengths: list[int], train_len: int) -> float | None:
    """x of the gap between the last column ≤ T and the first > T (None when all are on one side)."""
    inside = [i for i, n in enumerate(lengths) if n <= train_len]
    if not inside or len(inside) == len(lengths):
        return None
    return inside[-1] + 0.5


def passkey_heatmap(accuracy: list[list[float]], lengths: list[int], depths: list[float], train_len: int,
                    path: str | Path | None = None, title: str = "passkey retrieval") -> np.ndarray:
    """Depth (rows) × length (columns) score, red (0) → green (1), each cell labelled.

    The train length is marked without covering any cell label: its column's tick is bold and
    "(T)"-suffixed, and a dashed line runs in the gap between the columns ≤ T and > T.
    """
    plt = _plt()
    acc = np.asarray(accuracy, dtype=float)
    fig, ax = plt.subplots(figsize=(2.4 + 0.9 * len(lengths), 1.6 + 0.42 * len(depths)))
    im = ax.imshow(acc, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", origin="upper")
    ax.set_xticks(range(len(lengths)), [_fmt_len(n) + (" (T)" if n == train_len else "") for n in lengths])
    for tick, n in zip(ax.get_xticklabels(), lengths):
        if n == train_len:
            tick.set_fontweight("bold")
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            ax.text(j, i, f"{acc[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if 0.2 < acc[i, j] < 0.85 else "white" if acc[i, j] <= 0.2 else "black")
    x = _train_length_boundary(lengths, train_len)
    if x is not None:
        ax.axvline(x, color="black", linestyle="--", linewidth=1.5)
    ax.set_title(f"{title}\ntrain length T = {_fmt_len(train_len)} (dashed: beyond T)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05, label="score")
    return _finish(fig, path)


def _smooth(y: np.ndarray, k: int = 3) -> np.ndarray:
    """Centred moving average over k bins (shorter at the ends), so bin-to-bin noise does not hide the trend."""
    if len(y) < 3:
        return y
    out = np.empty_like(y)
    h = k // 2
    for i in range(len(y)):
        out[i] = y[max(0, i - h):i + h + 1].mean()
    return out


def loss_by_position_plot(curves: dict[str, tuple], train_len: int,
                          path: str | Path | None = None, title: str = "loss by token position") -> np.ndarray:
    """One smoothed line per curve {label: (positions, mean loss[, standard error])}, with a ±2·SE band
    when the error is given; a dashed line at the train length."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    for label, curve in curves.items():
        pos, loss = np.asarray(curve[0], dtype=float), np.asarray(curve[1], dtype=float)
        y = _smooth(loss)
        (line,) = ax.plot(pos, y, label=label, linewidth=1.4)
        if len(curve) > 2 and curve[2] is not None:
            se = _smooth(np.asarray(curve[2], dtype=float))
            ax.fill_between(pos, y - 2 * se, y + 2 * se, color=line.get_color(), alpha=0.18, linewidth=0)
    ax.axvline(train_len, color="black", linestyle="--", linewidth=1.2, label=f"train length {_fmt_len(train_len)}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("token position (log scale)")
    ax.set_ylabel("cross-entropy (nats), smoothed")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _finish(fig, path)
