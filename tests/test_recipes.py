"""The *-tiny recipes load, build the stack they name, and train (loss falls) on CPU; one of
them end to end through `python -m train`; recurrent state norms reach TensorBoard."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import models
from train.config import load_config
from train.loop import train

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["transformer", "mamba2", "hawk", "griffin", "hybrid"]
SHORT = ["--data.seq_len=64", "--data.batch_size=4", "--data.max_doc_chars=800", "--train.steps=12",
         "--checkpoint.every=0", "--optim.warmup_steps=3", "--train.log_every=1000", "--metrics.log_every=4"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains(name, tmp_path):
    cfg = load_config(ROOT / "configs" / f"{name}-tiny.toml", [*SHORT, f"--train.run_dir={tmp_path}"])
    symbols = set(models.parse_pattern(cfg.model.pattern))
    expected = {"transformer": {"*"}, "mamba2": {"M"}, "hawk": {"R"}, "griffin": {"R", "W"}, "hybrid": {"M", "*"}}
    assert expected[name] <= symbols
    losses = train(cfg, log=lambda *_: None).losses
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.5, losses


def test_state_norms_logged_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(ROOT / "configs" / "hybrid-tiny.toml",
                      [*SHORT, "--train.steps=4", f"--train.run_dir={tmp_path}"])
    train(cfg, log=lambda *_: None)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    symbols = models.parse_pattern(cfg.model.pattern)
    want = {f"state_norm/layer_{i}" for i, s in enumerate(symbols) if s in "MR"}
    assert want and want <= tags, sorted(tags)


def test_python_m_train_runs_a_recipe(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "train", "--config", "configs/griffin-tiny.toml", *SHORT, "--train.steps=3",
           f"--train.run_dir={tmp_path}"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "step" in res.stdout and "loss" in res.stdout
