"""Checkpoints: complete or absent, never half.

Layout: <run>/checkpoints/step-NNNNNNN/
  .metadata, *.distcp     model + optimizer via torch.distributed.checkpoint (sharded, reshardable)
  train_state.json        step, data-loader state, schedule/curriculum state (global, rank 0)
  rank-RRRRR.pt           per-rank RNG states and per-rank trainer state (e.g. [lengthgen] carry)
  config.toml             the resolved config of the run that wrote it
Everything is written into `.tmp-step-NNNNNNN/` and renamed to `step-NNNNNNN/` by rank 0 only
after every rank has finished writing; a crash before the rename leaves the previous
checkpoint as the newest complete one. keep_last prunes older complete checkpoints.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from parallel.distributed import barrier, is_dist
from parallel.engine import load_model_weights

warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

STEP_DIR = re.compile(r"^step-(\d{7,})$")


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_complete(path: Path) -> bool:
    return (path / ".metadata").is_file() and (path / "train_state.json").is_file()


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


class Checkpointer:
    def __init__(self, run_dir: str | Path, keep_last: int, rank: int):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.rank = rank
        self.rank_state: dict = {}

    def resolve(self, resume: str) -> Path | None:
        """The checkpoint `resume` names: none, auto (newest complete), or a directory."""
        if resume in ("", "none"):
            return None
        if resume == "auto":
            found = list_checkpoints(self.dir)
            return found[-1] if found else None
        path = Path(resume)
        if not path.is_dir() or not is_complete(path):
            warn(f"checkpoint {path} is missing or incomplete; starting without it")
            return None
        return path

    def save(self, step: int, engine, train_state: dict, config_toml: str,
             rank_state: dict | None = None) -> Path:
        """`engine` (parallel.Engine) writes the model and optimizer state; the rest is ours."""
        final = self.dir / f"step-{step:07d}"
        tmp = self.dir / f".tmp-step-{step:07d}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        engine.save(tmp)
        torch.save({"rng": rng_state(), "extra": rank_state or {}}, tmp / f"rank-{self.rank:05d}.pt")
        barrier()
        if self.rank == 0:
            (tmp / "config.toml").write_text(config_toml)
            write_json_synced(tmp / "train_state.json", train_state)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.dir)
            self.prune()
        barrier()
        return final

    def prune(self) -> None:
        if self.keep_last <= 0:
            return
        for old in list_checkpoints(self.dir)[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.dir.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)

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

    def load(self, path: Path, engine) -> dict:
        """Load model and optimizer (through `engine`) and this rank's RNG from `path`; returns the
        train state. This rank's extra state (save's rank_state) is left in self.rank_state ({} if none).
        A weights-only checkpoint (save_initial) loads the model and leaves the rest fresh."""
        train_state = json.loads((path / "train_state.json").read_text())
        self.rank_state = {}
        if train_state.get("weights_only"):
            engine.load_weights(path)
            return train_state
        engine.load(path)
        rank_file = path / f"rank-{self.rank:05d}.pt"
        self.rank_state = {}
        if rank_file.is_file():
            saved = torch.load(rank_file, weights_only=False)
            set_rng_state(saved["rng"])
            self.rank_state = saved.get("extra", {})
        else:
            warn(f"{rank_file.name} not in {path} (world size changed?); RNG state not restored")
        return json.loads((path / "train_state.json").read_text())


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


__all__ = ["Checkpointer", "list_checkpoints", "is_complete", "load_model_weights", "is_dist"]
