"""Checkpoints: complete or absent, never half.

Layout: <run>/checkpoints/step-NNNNNNN/
  .metadata, *.distcp     model + optimizer via torch.distributed.checkpoint (sharded, reshardable)
  train_state.json        step, data-loader state, schedule/curriculum state (global, rank 0)
  rank-RRRRR.pt           per-rank RNG states and per-rank trainer state (e.g. [lengthgen] carry)
  config.toml             the resolved config of the run that wrote it
Everything is written into `.tmp-step-NNNNNNN/` and renamed to `step-NNNNNNN/` by rank 0 only
after every rank has finished writing; a crash before the rename leaves the previous
checkpoint as the newest complete one. keep_last prunes older complete checkpoints, but never
one newer than the checkpoint just written, nor the one this run resumed from (the newest
checkpoint known to load). An explicit resume path that is not a complete checkpoint, a
checkpoint written for a different model, an unreadable rank file, non-finite weights and a
failed write are CheckpointError (one line, exit 2); train/checkpoint_guards.py has the checks.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from parallel.distributed import all_reduce, barrier, is_dist
from parallel.engine import load_model_weights
from train.checkpoint_guards import (
    CheckpointError,
    all_finite,
    check_model_config,
    describe_write_error,
    rank_file_load,
)

warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

STEP_DIR = re.compile(r"^step-(\d{7,})$")


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def rng_state() -> dict:
    """RNG states as tensors, numbers and lists only (what torch.load(weights_only=True) accepts)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                    int(has_gauss), float(gauss)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    saved = state["numpy"]
    if isinstance(saved, list):       # this format; the older one saved numpy's own tuple
        kind, keys, pos, has_gauss, gauss = saved
        saved = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)
    np.random.set_state(saved)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_complete(path: Path) -> bool:
    return (path / ".metadata").is_file() and (path / "train_state.json").is_file()


def checkpoint_step(path: Path) -> int:
    """The training step a complete checkpoint was saved at (0 for a weights-only initial one)."""
    return int(json.loads((path / "train_state.json").read_text()).get("step", 0))


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first. Incomplete `step-*` directories are skipped with a warning."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = STEP_DIR.match(p.name)
        if not m or not p.is_dir():
            continue
        if is_complete(p):
            found.append((int(m.group(1)), p))
        else:
            warn(f"skipping incomplete checkpoint {p} (missing .metadata or train_state.json)")
    return [p for _, p in sorted(found)]


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What `Checkpointer.load` read besides the model and optimizer: the shared train state
    (step, data position) and this rank's own extra state (RNG is restored in place)."""
    train_state: dict
    rank_state: dict


class Checkpointer:
    def __init__(self, run_dir: str | Path, keep_last: int, rank: int):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.rank = rank
        self.loaded: Path | None = None     # the checkpoint this run resumed from: never pruned by it

    def resolve(self, resume: str) -> Path | None:
        """The checkpoint `resume` names: none, auto (newest complete), or a directory. An explicit
        directory that is not a complete checkpoint is an error, never a silent fresh start."""
        if resume in ("", "none"):
            return None
        if resume == "auto":
            found = list_checkpoints(self.dir)
            return found[-1] if found else None
        path = Path(resume)
        if not path.is_dir():
            hint = ", ".join(p.name for p in list_checkpoints(path.parent)[-3:]) or "none"
            raise CheckpointError(f"--resume {path}: no such checkpoint directory (complete checkpoints in "
                                  f"{path.parent}: {hint}); pass an existing one, auto, or none")
        if not is_complete(path):
            raise CheckpointError(f"--resume {path}: not a complete checkpoint (missing .metadata or "
                                  "train_state.json); pass a complete step-* directory, auto, or none")
        return path

    def save(self, step: int, engine, train_state: dict, config_toml: str,
             rank_state: dict | None = None) -> Path:
        """`engine` (parallel.Engine) writes the model and optimizer state; the rest is ours."""
        final = self.dir / f"step-{step:07d}"
        tmp = self.dir / f".tmp-step-{step:07d}"
        if not all_finite(engine.module):
            newest = list_checkpoints(self.dir)
            raise CheckpointError(f"the weights are not finite at step {step}; not saving {final} (the newest "
                                  f"checkpoint, {newest[-1].name if newest else 'none'}, is untouched); lower "
                                  "optim.lr or set train.on_nonfinite=skip")
        self._agree(lambda: self._make_tmp(tmp) if self.rank == 0 else None, tmp)
        self._agree(lambda: self._write_shards(tmp, engine, rank_state), tmp)
        self._agree(lambda: self._publish(tmp, final, config_toml, train_state) if self.rank == 0 else None, tmp)
        if self.rank == 0:
            self.prune(keep=final)
        barrier()
        return final

    def _make_tmp(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)

    def _write_shards(self, tmp: Path, engine, rank_state: dict | None) -> None:
        engine.save(tmp)
        torch.save({"rng": rng_state(), "extra": rank_state or {}}, tmp / f"rank-{self.rank:05d}.pt")

    def _publish(self, tmp: Path, final: Path, config_toml: str, train_state: dict) -> None:
        (tmp / "config.toml").write_text(config_toml)
        write_json_synced(tmp / "train_state.json", train_state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(self.dir)

    def _agree(self, write, tmp: Path) -> None:
        """Run one write phase; if it fails on any rank, every rank raises one CheckpointError (no rank
        is left waiting in a barrier) and the partial temporary directory is removed."""
        error = None
        try:
            write()
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - a failed write: one line, path and cause
            error = e
        failed = all_reduce(torch.tensor([float(error is not None)], dtype=torch.float64)).item() > 0
        if failed:
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            msg = (describe_write_error(error, tmp) if error is not None
                   else f"another rank failed to write checkpoint {tmp}; see its error")
            raise CheckpointError(msg) from None

    def prune(self, keep: Path | None = None) -> None:
        """Remove all but the keep_last newest checkpoints up to `keep` (the one just written); never a
        newer one (another timeline's) and never the one this run resumed from."""
        for stale in self.dir.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if self.keep_last <= 0:
            return
        found = list_checkpoints(self.dir)
        if keep is not None and keep in found:
            found = found[: found.index(keep) + 1]
        for old in found[: -self.keep_last]:
            if self.loaded is None or old.resolve() != self.loaded.resolve():
                shutil.rmtree(old, ignore_errors=True)

    def save_initial(self, model, config_toml: str, source: str) -> Path:
        """A step-0 checkpoint of model weights only (an imported model, train/convert.py): the
        optimizer, data position and RNG start fresh when a run resumes from it."""
        final, tmp = self.dir / f"step-{0:07d}", self.dir / f".tmp-step-{0:07d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=str(tmp))
        (tmp / "config.toml").write_text(config_toml)
        write_json_synced(tmp / "train_state.json", {"step": 0, "data": None, "weights_only": True, "source": source})
        os.replace(tmp, final)
        fsync_dir(self.dir)
        return final

    def load(self, path: Path, engine, model_cfg=None, allow_model_change: list[str] = ()) -> LoadedCheckpoint:
        """Load model and optimizer (through `engine`) and this rank's RNG from `path`; returns the
        train state and this rank's extra state (save's rank_state; {} if none).
        A weights-only checkpoint (save_initial) loads the model and leaves the rest fresh.
        With `model_cfg`, a checkpoint written for a different model is refused first."""
        if model_cfg is not None:
            changed = check_model_config(path, model_cfg, list(allow_model_change))
            if changed and self.rank == 0:
                warn(f"resuming {path} with changed model keys {', '.join(changed)} (checkpoint.allow_model_change)")
        train_state = json.loads((path / "train_state.json").read_text())
        try:
            if train_state.get("weights_only"):
                engine.load_weights(path)
                self.loaded = path
                return LoadedCheckpoint(train_state, {})
            engine.load(path)
        except (CheckpointError, NotImplementedError):
            raise
        except (RuntimeError, ValueError, KeyError, CheckpointException) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise CheckpointError(f"checkpoint {path} does not fit this model/optimizer ({first}); resume with the "
                                  "settings it was written with") from None
        rank_file = path / f"rank-{self.rank:05d}.pt"
        rank_state = {}
        if rank_file.is_file():
            saved = rank_file_load(rank_file)
            set_rng_state(saved["rng"])
            rank_state = saved.get("extra", {})
        else:
            warn(f"{rank_file.name} not in {path} (world size changed?); RNG state not restored")
        self.loaded = path
        return LoadedCheckpoint(train_state, rank_state)


def write_json_synced(path: Path, obj) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["Checkpointer", "LoadedCheckpoint", "CheckpointError", "list_checkpoints", "is_complete", "load_model_weights", "is_dist"]
