"""Checkpoint guards (issue 20): an explicit --resume that is not a checkpoint, a checkpoint for
another model, a rank file carrying pickled code, non-finite weights and failed writes are all
one-line errors that lose nothing; pruning never removes a newer checkpoint or the one resumed from."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import train.checkpoint as ck
from train.checkpoint import Checkpointer, CheckpointError, list_checkpoints
from train.checkpoint_guards import rank_file_load
from train.config import load_config
from train.loop import train

QUICK = ["--model.d_model=16", "--model.n_heads=2", "--model.window=8", "--model.n_kv_heads=1", "--model.pattern=(*-)x2",
         "--data.seq_len=16", "--data.batch_size=2", "--data.max_doc_chars=400", "--train.log_every=1000",
         "--metrics.tensorboard=false", "--checkpoint.resume=none"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def quick(run_dir, *extra):
    return load_config("configs/tiny.toml", [*QUICK, f"--train.run_dir={run_dir}", *extra])


def silent(*_):
    pass


def names(run) -> list[str]:
    return [p.name for p in list_checkpoints(run / "checkpoints")]


def cli(*args, script: str | None = None):
    head = [sys.executable, "-c", script] if script else [sys.executable, "-m", "train"]
    return subprocess.run([*head, "--config", "configs/tiny.toml", *QUICK, *args], capture_output=True, text=True,
                          timeout=900, env=ENV)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("ckpt") / "run"
    train(quick(run, "--train.steps=4", "--checkpoint.every=2", "--checkpoint.keep_last=0"), log=silent)
    return run


def test_explicit_resume_that_is_not_a_checkpoint_exits_2_and_prunes_nothing(trained, tmp_path):
    run = tmp_path / "run"
    import shutil

    shutil.copytree(trained, run)
    (run / "checkpoints" / "not-a-ckpt").mkdir()
    bad = run / "checkpoints" / "step-000004"                      # one digit short
    r = cli(f"--train.run_dir={run}", "--train.steps=8", "--checkpoint.every=1", "--checkpoint.keep_last=1",
            "--resume", str(bad))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --resume {bad}: no such checkpoint"), r.stderr
    assert "step-0000004" in lines[0]                               # the ones that do exist are listed
    assert "step 1" not in r.stdout
    assert names(run) == ["step-0000002", "step-0000004"]          # nothing trained, nothing pruned
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        train(quick(run, "--train.steps=8", "--checkpoint.every=1", "--checkpoint.keep_last=1",
                    f"--checkpoint.resume={run / 'checkpoints' / 'not-a-ckpt'}"), log=silent)
    assert names(run) == ["step-0000002", "step-0000004"]
    from train.metrics import read_step_log

    assert max(read_step_log(run)) == 4


def test_resume_refuses_a_different_model_naming_the_keys(trained, tmp_path):
    ckpt = trained / "checkpoints" / "step-0000004"
    for change, key in (("--model.pattern=(*-)x1", "model.pattern"), ("--model.pattern=(W-)x2", "model.pattern"),
                        ("--model.d_model=32", "model.d_model")):
        with pytest.raises(CheckpointError, match=rf"different model \({key} .*allow_model_change"):
            train(quick(tmp_path / "x", "--train.steps=6", f"--checkpoint.resume={ckpt}", change), log=silent)
    r = cli(f"--train.run_dir={tmp_path / 'y'}", "--train.steps=6", f"--resume={ckpt}", "--model.pattern=(*-)x1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "model.pattern '(*-)x2' -> '(*-)x1'" in r.stderr
    # an intended change (here: fewer layers) is named explicitly and then loads
    out = train(quick(tmp_path / "z", "--train.steps=5", f"--checkpoint.resume={ckpt}", "--model.pattern=(*-)x1",
                      "--checkpoint.allow_model_change=pattern"), log=silent)
    assert out.final_step == 5 and len(out.losses) == 1
    # a change that does not fit the weights is one line too, not a DCP traceback
    with pytest.raises(CheckpointError, match="does not fit"):
        train(quick(tmp_path / "w", "--train.steps=6", f"--checkpoint.resume={ckpt}", "--model.d_model=32",
                    "--checkpoint.allow_model_change=d_model"), log=silent)


def test_pruning_keeps_newer_checkpoints_and_the_one_resumed_from(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    start = run / "checkpoints" / "step-0000002"
    train(quick(run, "--train.steps=3", "--checkpoint.every=1", "--checkpoint.keep_last=1",
                f"--checkpoint.resume={start}"), log=silent)
    assert names(run) == ["step-0000002", "step-0000003", "step-0000004"]


class Payload:
    """Unpickling this creates a file: code a weights_only=False load would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_rank_file_with_pickled_code_is_refused(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    ckpt = run / "checkpoints" / "step-0000004"
    rank_file = ckpt / "rank-00000.pt"
    torch.load(rank_file, weights_only=True)                        # what we write is plain data
    marker = tmp_path / "pwned"
    saved = torch.load(rank_file, weights_only=True)
    saved["extra"] = {"x": Payload(marker)}
    torch.save(saved, rank_file)
    with pytest.raises(CheckpointError, match="pickled objects .* trust"):
        train(quick(tmp_path / "r", "--train.steps=6", f"--checkpoint.resume={ckpt}"), log=silent)
    assert not marker.exists()


def test_rank_files_of_the_previous_format_still_load(tmp_path):
    np.random.seed(7)
    old = {"rng": {"python": __import__("random").getstate(), "numpy": np.random.get_state(),
                   "torch": torch.get_rng_state()}, "extra": {}}
    torch.save(old, tmp_path / "rank-00000.pt")
    expected = np.random.rand(3)
    np.random.seed(0)
    ck.set_rng_state(rank_file_load(tmp_path / "rank-00000.pt")["rng"])
    assert np.array_equal(np.random.rand(3), expected)


class TinyEngine:
    """What Checkpointer.save needs of a parallel.Engine: the module and a save."""

    def __init__(self, module):
        self.module = module

    def save(self, directory):
        import torch.distributed.checkpoint as dcp

        dcp.save({"model": self.module.state_dict()}, checkpoint_id=str(directory))


def test_non_finite_weights_are_never_saved(tmp_path):
    model = torch.nn.Linear(3, 2)
    c = Checkpointer(tmp_path, keep_last=1, rank=0)
    c.save(1, TinyEngine(model), {"step": 1, "data": {}}, "[model]\n")
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="not finite at step 2.*step-0000001"):
        c.save(2, TinyEngine(model), {"step": 2, "data": {}}, "[model]\n")
    assert names(tmp_path) == ["step-0000001"] and not list((tmp_path / "checkpoints").glob(".tmp-*"))


DISK_FULL = textwrap.dedent("""
    import errno, os, sys, torch
    import train.checkpoint as ck
    real = torch.save
    def full(obj, f, *a, **k):
        if "step-0000004" in str(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real(obj, f, *a, **k)
    ck.torch.save = full
    from train.__main__ import main
    sys.exit(main(sys.argv[1:]))
""")


def test_disk_full_is_one_line_and_leaves_the_previous_checkpoint_newest(tmp_path):
    run = tmp_path / "run"
    r = cli(f"--train.run_dir={run}", "--train.steps=6", "--checkpoint.every=2", "--checkpoint.keep_last=1",
            script=DISK_FULL)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0] and ".tmp-step-0000004" in lines[0], r.stderr
    assert names(run) == ["step-0000002"]
    assert not list((run / "checkpoints").glob(".tmp-step-*"))
    import json
    record = json.loads((run / "exit.json").read_text())
    assert record["exit_code"] == 2 and "No space left" in record["reason"]


def test_torch_enforce_failure_on_a_full_disk_says_no_space(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    c = Checkpointer(tmp_path, keep_last=1, rank=0)

    def enforce_fail(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(ck.torch, "save", enforce_fail)
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: type("U", (), {"free": 0})())
    with pytest.raises(CheckpointError, match=rf"{os.strerror(errno.ENOSPC)}.*previous checkpoint"):
        c.save(1, TinyEngine(model), {"step": 1, "data": {}}, "[model]\n")
    assert not (tmp_path / "checkpoints" / ".tmp-step-0000001").exists()


def test_a_dcp_wrapped_os_error_names_its_cause(tmp_path):
    from torch.distributed.checkpoint.api import CheckpointException, _wrap_exception

    from train.checkpoint_guards import describe_write_error

    try:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "x.distcp"))
    except OSError as e:
        wrapped = CheckpointException("save failed", {1: _wrap_exception(e)})
    line = describe_write_error(wrapped, tmp_path / ".tmp-step-0000003")
    assert os.strerror(errno.EROFS) in line and ".tmp-step-0000003" in line and "\n" not in line
