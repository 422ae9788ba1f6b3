"""Layouts that cannot work are refused with one line naming the setting to change."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from parallel.dims import LayoutError, ParallelDims, validate_layout
from train.config import ParallelConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


def model(pattern="(*-)x2", **kw):
    over = [f"--model.pattern={pattern}"] + [f"--model.{k}={v}" for k, v in kw.items()]
    return load_config(None, over).model


@pytest.mark.parametrize("dims,cfg,match", [
    (ParallelDims(tp=3), model(vocab_size=262, n_heads=3, d_model=96, n_kv_heads=3),
     "vocabulary size .* not divisible by parallel.tp=3"),
    (ParallelDims(tp=8), model(vocab_size=264), "attention heads \\(4\\) is not divisible by parallel.tp=8"),
    (ParallelDims(tp=2), model(n_heads=6, n_kv_heads=3, d_model=96),
     "n_kv_heads=3 must divide or be divisible by parallel.tp=2"),
    (ParallelDims(tp=4), model(mlp_hidden=102), "MLP hidden size \\(102\\)"),
    (ParallelDims(tp=4), model("M-", ssm_headdim=64, d_model=96), "Mamba-2 heads \\(3\\)"),
    (ParallelDims(tp=4), model("M-", ssm_ngroups=2), "ssm_ngroups=2 must be 1 or divisible by parallel.tp=4"),
    (ParallelDims(tp=4), model("R-", lru_width=6, lru_heads=3), "Griffin recurrent width \\(6\\)"),
    (ParallelDims(tp=4), model("R-", lru_heads=2), "Griffin gate blocks \\(2\\)"),
    (ParallelDims(pp=4), model("*-*"), "3 layers, fewer than the 4 pipeline stages"),
])
def test_bad_model_split_is_one_line(dims, cfg, match):
    with pytest.raises(LayoutError, match=match) as e:
        validate_layout(dims, cfg)
    assert "\n" not in str(e.value)


def test_pipeline_microbatch_errors():
    pcfg = ParallelConfig(pp=2, pp_microbatches=3)
    with pytest.raises(LayoutError, match="batch_size=8 is not divisible by parallel.pp_microbatches=3"):
        validate_layout(ParallelDims(pp=2), model(), pcfg, batch_size=8)
    pcfg = ParallelConfig(pp=4, pp_microbatches=2, pp_schedule="1f1b")
    with pytest.raises(LayoutError, match="needs parallel.pp_microbatches >= parallel.pp=4"):
        validate_layout(ParallelDims(pp=4), model("(*-)x4"), pcfg, batch_size=8)
    pcfg = ParallelConfig(pp=2, pp_schedule="interleaved_1f1b")
    with pytest.raises(LayoutError, match="fewer than the 4 pipeline stages"):
        validate_layout(ParallelDims(pp=2), model("*-*"), pcfg, batch_size=8)


def test_world_size_mismatch():
    with pytest.raises(LayoutError, match="needs 4 processes but the world size is 2"):
        ParallelDims.from_config(ParallelConfig(tp=2, pp=2), world=2)
    assert ParallelDims.from_config(ParallelConfig(tp=2), world=4) == ParallelDims(dp=2, tp=2)


def test_cli_reports_layout_error_exit_2():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "train", "--config", "configs/tiny.toml", "--parallel.tp=2"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs 2 processes but the world size is 1" in lines[0], p.stderr

