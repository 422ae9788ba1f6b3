"""The built wheel works outside the checkout: recipes and SLURM templates are package data,
`longweave-train --config tiny`, `longweave-launch slurm --dry-run` and evaluation run from an
empty directory. The wheel is built without dependencies and installed into a fresh venv that
borrows this interpreter's site-packages (torch and friends) through a .pth file, so nothing is
downloaded."""
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", "shards",
                              "tests")
TINY = ["--model.d_model=32", "--model.n_heads=2", "--model.n_kv_heads=1", "--data.seq_len=32",
        "--data.batch_size=2", "--data.max_doc_chars=800", "--train.steps=2", "--train.run_dir=run"]


def run(cmd, cwd, env, timeout=600):
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} -> {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=SKIP)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
         src], tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("longweave-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    py = venv / "bin" / "python"
    purelib = run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path, env).strip()
    # this interpreter's packages (torch, numpy, ...) after the fresh venv's own: nothing to download
    (Path(purelib) / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel],
        tmp_path, env)
    empty = tmp_path / "empty"
    empty.mkdir()
    where = run([py, "-c", "import train, launch; print(train.__file__, launch.__file__)"], empty, env)
    assert str(REPO) not in where and str(venv) in where
    out = run([venv / "bin" / "longweave-train", "--config", "tiny", *TINY], empty, env)
    assert "threads:" in out and "step      2/2" in out
    assert (empty / "run" / "checkpoints" / "step-0000002").is_dir()
    script = run([venv / "bin" / "longweave-launch", "slurm", "--config", "configs/tiny.toml", "--nproc-per-node",
                  "2", "--time", "00:20:00", "--dry-run", "--train.run_dir=run"], empty, env)
    assert "#SBATCH --cpus-per-task=2" in script and "share/longweave/slurm/requeue.sh" in script
    run([py, "-m", "train.evaluate", "--checkpoint", "run", "--lengths", "160", "--depths", "1", "--trials", "1",
         "--loss-length", "64", "--loss-docs", "1", "--no-tensorboard"], empty, env)
    written = {p.name for p in (empty / "run" / "checkpoints" / "step-0000002" / "eval").iterdir()}
    assert {"loss_by_position.json", "passkey.json", "passkey.png"} <= written
