"""Guards around checkpoints: the checks that keep a resume from being silently wrong.

- `model_config_diff`: the checkpoint's saved [model] section against the run's; resume refuses
  a difference unless each differing key is named in checkpoint.allow_model_change.
- `rank_file_load`: per-rank files are read with torch.load(weights_only=True), so a rank file
  carrying a pickled object (code) is refused instead of executed.
- `all_finite`: every rank's parameters are finite (agreed across ranks) before a save.
- `describe_write_error`: a failed save as one line naming the path and the cause (disk full,
  read-only file system, permission) instead of a DCP / inline_container traceback.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import shutil
import sys
from pathlib import Path

import torch

from models.config import ModelConfig
from parallel.distributed import all_reduce
from train.errors import RunError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class CheckpointError(RunError):
    """A checkpoint that cannot be used as asked (one line, exit 2)."""


def model_config_diff(saved_toml: str, model: ModelConfig) -> dict[str, tuple]:
    """{key: (checkpoint value, run value)} for every model key that differs. A key the checkpoint
    does not record (a field added since) compares as its default; a key the run no longer has is ignored."""
    saved = tomllib.loads(saved_toml).get("model", {})
    defaults = ModelConfig()
    diff = {}
    for f in dataclasses.fields(ModelConfig):
        old = saved.get(f.name, getattr(defaults, f.name))
        new = getattr(model, f.name)
        if old != new:
            diff[f.name] = (old, new)
    return diff


def check_model_config(path: Path, model: ModelConfig, allowed: list[str]) -> list[str]:
    """Raise CheckpointError if the checkpoint at `path` was written for a different model (keys not
    in `allowed`); returns the allowed keys that do differ (for a log line)."""
    cfg_file = path / "config.toml"
    if not cfg_file.is_file():
        return []           # written before configs were saved beside checkpoints: nothing to compare
    try:
        diff = model_config_diff(cfg_file.read_text(), model)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise CheckpointError(f"cannot read {cfg_file} ({e}); the checkpoint is damaged") from None
    refused = {k: v for k, v in diff.items() if k not in allowed}
    if refused:
        keys = ", ".join(f"model.{k} {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise CheckpointError(
            f"checkpoint {path} is for a different model ({keys}); resume with the checkpoint's model settings, "
            f"or pass --checkpoint.allow_model_change={','.join(refused)} if the change is intended")
    return sorted(diff)


def rank_file_load(path: Path) -> dict:
    """torch.load with weights_only=True: tensors, numbers, strings and containers only. Files of the
    format before this guard hold numpy RNG arrays; those few numpy types are allow-listed."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as first:
        try:
            with torch.serialization.safe_globals(_numpy_globals()):
                return torch.load(path, weights_only=True)
        except pickle.UnpicklingError:
            raise CheckpointError(
                f"{path} holds pickled objects that are not plain tensors/numbers (refused: loading them could run "
                f"code; {str(first).splitlines()[0][:160]}); resume only checkpoints you trust and wrote") from None
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                              "the checkpoint is damaged, resume from an older one") from None


def _numpy_globals() -> list:
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    out = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    return out


def all_finite(model) -> bool:
    """True when every parameter on every rank is finite (one all-reduce, so ranks agree)."""
    module = getattr(model, "module", model)
    bad = 0.0
    for p in module.parameters():
        t = p.to_local() if hasattr(p, "to_local") else p
        if not bool(torch.isfinite(t.detach()).all()):
            bad = 1.0
            break
    return all_reduce(torch.tensor([bad], dtype=torch.float64)).item() == 0


def root_os_error(exc: BaseException) -> OSError | None:
    """The OSError under a (DCP-wrapped) exception, if any."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return e
        todo += [e.__cause__, e.__context__]
        failures = getattr(e, "failures", None)      # torch.distributed.checkpoint's CheckpointException
        if isinstance(failures, dict):
            for f in failures.values():          # (exception, stack summary) per failed rank
                todo.append(f if isinstance(f, BaseException) else f[0] if isinstance(f, tuple) and f else None)
    return None


def describe_write_error(exc: BaseException, path: Path) -> str:
    """One line: where the write failed and why."""
    err = root_os_error(exc)
    if err is not None:
        cause = os.strerror(err.errno)
    else:
        try:
            free = shutil.disk_usage(path.parent if not path.exists() else path).free
        except OSError:
            free = -1
        text = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        cause = (f"{os.strerror(errno.ENOSPC)} ({free} bytes free; {text})" if 0 <= free < 64 << 20 else text)
    return (f"cannot write checkpoint {path}: {cause}; free space or fix permissions under {path.parent}, "
            "then resume (the previous checkpoint is still the newest)")
