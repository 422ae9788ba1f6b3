"""Optional Weights & Biases logging beside TensorBoard (`metrics.wandb = true`), with the same tags.

The trainer talks to one logger object; `build_loggers` returns TensorBoard, W&B, both (fanned out)
or neither, so every scalar, text and image goes to each with the same tag and step. The W&B run
is named after the run directory and keeps one id per run directory (`<run>/wandb_id`), so a
resumed run appends to the same W&B run. `metrics.wandb_mode = "offline"` (or WANDB_MODE=offline)
writes under `<run>/wandb/` without network; `wandb sync` uploads it later.
"""
from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

from train.config import ConfigError
from train.metrics import TensorBoardLogger


def require_wandb(enabled: bool) -> None:
    """A one-line error before anything starts when W&B logging is asked for but not installed."""
    if enabled:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("metrics.wandb = true needs the wandb package: pip install 'longweave[wandb]' "
                              "(or set metrics.wandb=false)") from None


class WandbLogger:
    """Rank-0 W&B run with TensorBoardLogger's interface (a no-op when disabled)."""

    def __init__(self, run_dir: str | Path, enabled: bool, cfg=None):
        self.run = None
        if not enabled:
            return
        import wandb

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        m = cfg.metrics if cfg is not None else None
        self.run = wandb.init(project=m.wandb_project if m else "longweave", name=run_dir.resolve().name,
                              id=run_id, resume="allow", dir=str(run_dir),
                              mode=m.wandb_mode if m else "offline",
                              config=dataclasses.asdict(cfg) if cfg is not None else None)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.run:
            logged = {k: v for k, v in values.items() if v is not None}
            if logged:
                self.run.log(logged, step=step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.run:
            import wandb

            self.run.log({tag: wandb.Html(f"<pre>{text}</pre>")}, step=step)

    def image(self, tag: str, img_hwc, step: int) -> None:
        if self.run:
            import wandb

            self.run.log({tag: wandb.Image(img_hwc)}, step=step)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.run:
            self.run.finish()
            self.run = None


class FanOut:
    """Several loggers behind the one interface the trainer uses."""

    def __init__(self, *loggers):
        self.loggers = loggers

    def __getattr__(self, name):
        def call(*args, **kwargs):
            for logger in self.loggers:
                getattr(logger, name)(*args, **kwargs)
        return call


def build_loggers(run_dir: str | Path, cfg, is_main: bool):
    """TensorBoard (metrics.tensorboard) and W&B (metrics.wandb) on rank 0, as one logger."""
    tb = TensorBoardLogger(run_dir, cfg.metrics.tensorboard and is_main)
    if not (cfg.metrics.wandb and is_main):
        return tb
    return FanOut(tb, WandbLogger(run_dir, True, cfg))
