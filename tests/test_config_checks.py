"""Range checks at config load (issue 20): values that trained nonsense, crashed later, or did
nothing are one-line ConfigErrors; through the CLI, exit 2 with one line."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from train.config import ConfigError, load_config

BAD = [
    ("--optim.lr=0", "optim.lr"), ("--optim.lr=-1e-3", "optim.lr"), ("--optim.lr=nan", "optim.lr"),
    ("--optim.lr=inf", "optim.lr"), ("--data.batch_size=0", "data.batch_size"),
    ("--data.batch_size=-2", "data.batch_size"), ("--data.seq_len=0", "data.seq_len"),
    ("--train.grad_accum=0", "train.grad_accum"), ("--train.log_every=0", "train.log_every"),
    ("--train.steps=0", "train.steps"), ("--train.steps=-5", "train.steps"), ("--checkpoint.every=-1", "checkpoint.every"),
    ("--checkpoint.keep_last=-1", "checkpoint.keep_last"), ("--train.threads=-1", "train.threads"),
    ("--optim.beta2=1.0", "optim.beta2"), ("--optim.grad_clip=nan", "optim.grad_clip"),
    ("--parallel.dp=0", "parallel.dp"), ("--train.max_nonfinite=0", "train.max_nonfinite"),
    ("--checkpoint.allow_model_change=not_a_key", "allow_model_change"),
]


@pytest.mark.parametrize("override,key", BAD)
def test_out_of_range_values_are_one_line_errors(override, key):
    with pytest.raises(ConfigError, match=key) as e:
        load_config("configs/tiny.toml", [override])
    assert "\n" not in str(e.value)


def test_window_longer_than_the_sequence_is_refused_for_window_layers():
    with pytest.raises(ConfigError, match=r"model.window=512 is longer than data.seq_len=256"):
        load_config("configs/tiny.toml", ["--model.pattern=(W-)x2", "--model.window=512"])
    load_config("configs/tiny.toml", ["--model.window=512"])                 # no W layer: window unused
    load_config("configs/tiny.toml", ["--model.pattern=(W-)x2", "--model.window=256"])


def test_defaults_and_recipes_pass():
    for name in sorted(os.listdir("configs")):
        if name.endswith(".toml"):
            load_config(f"configs/{name}")


@pytest.mark.parametrize("override", ["--optim.lr=nan"]
                         + ([] if torch.cuda.is_available() else ["--train.device=cuda"]))
def test_cli_exits_2_with_one_line(override, tmp_path):
    r = subprocess.run([sys.executable, "-m", "train", "--config", "configs/tiny.toml", override,
                        f"--train.run_dir={tmp_path}"], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: "), r.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_cuda_is_checked_by_the_trainer_not_at_load():
    load_config("configs/tiny.toml", ["--train.device=cuda"])      # a login node may load a GPU recipe
