"""Smoke test of the real launcher path: torchrun with 4 CPU processes, tp=2 × pp=2 on the
tiny hybrid recipe, saves a checkpoint, then a second launch resumes from it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def torchrun(run_dir: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4", "-m", "train",
           "--config", "configs/hybrid-tiny.toml", "--parallel.tp=2", "--parallel.pp=2",
           f"--train.steps={steps}", "--checkpoint.every=2", f"--train.run_dir={run_dir}",
           "--train.log_every=1", "--data.seq_len=64", "--data.batch_size=4", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)


def test_torchrun_tp2_pp2_saves_and_resumes(tmp_path):
    first = torchrun(tmp_path, 2)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "step      2/2" in first.stdout
    assert (tmp_path / "checkpoints" / "step-0000002" / ".metadata").is_file()
    second = torchrun(tmp_path, 3, "--resume", "auto")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and "step-0000002 at step 2" in second.stdout
    assert "step      3/3" in second.stdout
    assert (tmp_path / "checkpoints" / "step-0000003" / ".metadata").is_file()
