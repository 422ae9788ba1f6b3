"""Every ```bash block of README.md, run as written, in order, in a copy of the repository.

The commands are a sequence (later ones use the runs and shards earlier ones wrote), so one test
runs them all, one command at a time (backslash-continued lines are one command), and a failure
names the command. Sizes are shrunk the way the README says, through LONGWEAVE_OVERRIDES; `make`
uses this interpreter's environment through the Makefile's VENV variable. The only commands not
run are in SKIP, each with the reason it cannot run here. The README's input files (a `corpus/`
directory and `extra.jsonl`, which a user brings) are written first.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# rows of 144 tokens: evaluation's default prompt lengths (1x, 2x, 4x the training length) must hold a passkey prompt
TINY = ("--model.d_model=32 --model.n_heads=2 --model.n_kv_heads=1 --data.seq_len=144 --data.batch_size=1 "
        "--data.max_doc_chars=800 --eval.passkey_lengths=144 --train.log_every=50")

# (pattern matched against the command, why it is not run here)
SKIP = [
    (r"^make test\b", "runs this test suite itself (CI's `make test`)"),
    (r"--nnodes 2 --node-rank", "needs two machines: each node runs its half of the rendezvous"),
    (r"^python -m launch slurm (?!.*--dry-run)", "submits to a SLURM queue (tests/test_slurm_cluster.py covers it)"),
    (r"^tensorboard ", "starts a web server that runs until stopped"),
    (r"hf/|runs/llama3\.2-1b-64k|runs/mamba2-370m-64k|shards/(llama3|neox)/",
     "needs models downloaded from the Hugging Face Hub; tests/test_interop_readme.py runs this section with "
     "tiny stand-ins at the same paths"),
]


def bash_commands(readme: str) -> list[str]:
    """The commands of every ```bash block, in order; a trailing backslash joins lines."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", readme, flags=re.S | re.M):
        pending = ""
        for line in block.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            command = (pending + line).strip()
            pending = ""
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def shell_steps(commands: list[str]) -> list[str]:
    """Commands as the test runs them: one per shell, except that commands sent to the background
    (`... &`) run in one shell with the commands up to their `wait`, as a user's terminal would."""
    steps, pending = [], []
    for command in commands:
        code = command.split("#")[0].strip()
        if pending or code.endswith("&"):
            pending.append(command)
            if code.startswith("wait"):
                steps.append("\n".join(pending))
                pending = []
            continue
        steps.append(command)
    assert not pending, f"README: background commands without a `wait` after them: {pending}"
    return steps


def skip_reason(command: str) -> str | None:
    return next((why for pattern, why in SKIP if re.search(pattern, command)), None)


def copy_repo(dst: Path) -> None:
    shutil.copytree(REPO, dst, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "shards*", "build", "dist", "*.egg-info", "__pycache__"))


def fake_venv(root: Path, repo_copy: Path) -> Path:
    """A VENV for the Makefile whose python is this interpreter, already set up (stamps newer than pyproject)."""
    (root / "bin").mkdir(parents=True)
    py = root / "bin" / "python"
    py.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    for stamp in (".longweave-train-installed", ".longweave-installed"):
        (root / stamp).touch()
    return root


def user_inputs(cwd: Path) -> None:
    (cwd / "corpus").mkdir()
    for i in range(3):
        (cwd / "corpus" / f"doc{i}.txt").write_text(f"Document {i}. " + "The quick brown fox. " * (40 + 20 * i))
    (cwd / "extra.jsonl").write_text("".join(f'{{"text": "line {i}: {"lorem ipsum " * 30}"}}\n' for i in range(20)))


def test_readme_commands_are_collected():
    commands = bash_commands((REPO / "README.md").read_text())
    assert commands[0].startswith("make train") and any(c.startswith("python -m train") for c in commands)
    assert all("\\" not in c for c in commands)
    assert any(skip_reason(c) is None for c in commands)


@pytest.mark.slow
def test_readme_commands_run_in_order(tmp_path):
    cwd = tmp_path / "longweave"
    copy_repo(cwd)
    venv = fake_venv(tmp_path / "venv", cwd)
    user_inputs(cwd)
    env = {**os.environ, "LONGWEAVE_OVERRIDES": TINY, "VENV": str(venv), "PYTHONPATH": str(cwd),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("OMP_NUM_THREADS", None)   # the trainer chooses its threads (a README claim)
    ran, skipped = [], []
    for command in shell_steps(bash_commands((REPO / "README.md").read_text())):
        reason = skip_reason(command)
        if reason:
            skipped.append((command, reason))
            continue
        out = subprocess.run(["bash", "-c", f"set -euo pipefail\n{command}"], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, (f"README command failed (exit {out.returncode}): {command}\n"
                                     f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        ran.append(command)
    assert ran and all(reason for _, reason in skipped)
    assert (cwd / "runs" / "tiny" / "checkpoints").is_dir()
