"""`python -m train.plan`: the report for a recipe, one-line exit 2 for bad input and for a run
that cannot fit (naming the biggest term), and the trainer's summary line at start."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from train.plan import main

ROOT = Path(__file__).resolve().parents[1]


def test_report_for_a_real_recipe(capsys):
    assert main(["--config", str(ROOT / "configs" / "transformer-8b-64k.toml"), "--gpu", "h100",
                 "--world", "8"]) == 0
    out = capsys.readouterr().out
    assert "8.030 B total, 2.008 B per rank (tp 4" in out
    for engine in ("ddp", "fsdp", "zero1", "zero2", "zero3"):
        assert f"\n  {engine} " in out
    assert "fsdp" in out.splitlines()[-1] and out.rstrip().endswith("fits")


@pytest.mark.parametrize("args,message", [
    (["--gpu", "tpu"], "--gpu 'tpu' is not known"),
    (["--parallel.tp=3"], "not divisible by parallel.tp=3"),
    (["--world", "3", "--parallel.sp=2"], "needs 2 processes but the world size is 3"),
    (["--model.d_modl=8"], "unknown config key"),
])
def test_bad_input_is_one_line_exit_2(args, message, capsys):
    assert main(["--config", str(ROOT / "configs" / "tiny.toml"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err, err


def test_a_run_that_cannot_fit_names_its_biggest_term(capsys):
    args = ["--config", str(ROOT / "configs" / "transformer-8b-64k.toml"), "--world", "8",
            "--train.activation_checkpointing=false"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "DOES NOT FIT (biggest: activations)" in captured.out
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "biggest term is activations" in err
    assert "train.activation_checkpointing=true" in err


def test_python_m_train_plan_and_the_trainer_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    short = ["--train.steps=1", "--data.seq_len=64", "--data.batch_size=2", "--checkpoint.every=0"]
    res = subprocess.run([sys.executable, "-m", "train.plan", "--config", "configs/tiny.toml", "--gpu", "cpu", *short],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip().splitlines()[-1]
    assert line.startswith("memory plan (cpu, ddp)")

    # the trainer prints the planner's line at start (its own process: what a user's console shows)
    run = subprocess.run([sys.executable, "-m", "train", "--config", "configs/tiny.toml", *short,
                          f"--train.run_dir={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert line in run.stdout.splitlines()
